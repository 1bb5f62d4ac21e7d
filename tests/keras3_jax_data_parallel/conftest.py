"""Keras 3 on JAX over two CPU devices. This folder runs in its own process
(`make test-keras3-jax-data-parallel`): XLA makes the host's devices when
JAX initialises, from this flag."""

import os
import sys

assert "jax" not in sys.modules, "JAX initialised before the device count was set"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()
os.environ["KERAS_BACKEND"] = "jax"
