"""Keras 3 on PyTorch. This folder runs in its own process, started with
KERAS_BACKEND=torch (Keras reads it once, when it is first imported)."""
