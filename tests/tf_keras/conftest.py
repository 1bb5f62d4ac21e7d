"""tf-keras in eager mode (bert4keras's stack). This folder runs in its own
process (`make test-tf-keras`): the flags must be set before TensorFlow loads."""

import keras_adv

keras_adv.prepare_bert4keras()

import bert4keras.backend  # noqa: E402,F401  (puts tf.keras under the name `keras`)
