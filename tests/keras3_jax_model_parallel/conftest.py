"""Keras 3 on JAX over eight CPU devices, for `keras.distribution.ModelParallel`
meshes of 2 and 8 of them. This folder runs in its own process
(`make test-keras3-jax-model-parallel`): XLA splits the host CPU into
devices when JAX initialises, from this flag, so it is set before anything
imports JAX (tests/keras3_jax_data_parallel/conftest.py does the same with two).

XLA's optimisation passes are off in this process: they take about half the
time of compiling a step on a CPU and change nothing but float rounding,
which the tolerances allow (tests/keras3/test_large_models.py turns them off
per module, as `jax_disable_most_optimizations`)."""

import os
import sys

assert "jax" not in sys.modules, "JAX initialised before the device count was set"
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
os.environ["KERAS_BACKEND"] = "jax"
