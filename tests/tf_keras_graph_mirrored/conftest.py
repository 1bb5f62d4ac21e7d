"""tf-keras with eager execution disabled, on two logical CPU devices. This
folder runs in its own process (`make test-tf-keras-graph-mirrored`): graph
mode is global, and the devices are set before TensorFlow initialises."""

import keras_adv

keras_adv.prepare_bert4keras()

import bert4keras.backend  # noqa: E402,F401  (puts tf.keras under the name `keras`)
import tensorflow as tf  # noqa: E402

tf.compat.v1.disable_eager_execution()
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
