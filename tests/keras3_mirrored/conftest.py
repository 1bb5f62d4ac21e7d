"""Keras 3 (TensorFlow) on two logical CPU devices. This folder runs in its own
process (`make test-keras3-mirrored`): devices are set before TensorFlow
initialises."""

import tensorflow as tf

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
