"""Keras 3 on JAX. This folder runs in its own process, started with
KERAS_BACKEND=jax (Keras reads it once, when it is first imported)."""
