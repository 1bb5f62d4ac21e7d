"""tf-keras with eager execution disabled. This folder runs in its own process
(`make test-tf-keras`): graph mode is global and cannot be turned back."""

import keras_adv

keras_adv.prepare_bert4keras()

import bert4keras.backend  # noqa: E402,F401  (puts tf.keras under the name `keras`)
import tensorflow as tf  # noqa: E402

tf.compat.v1.disable_eager_execution()
