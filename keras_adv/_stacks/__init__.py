"""One module per training stack, each owning exactly that stack's step contract.

The stack is read from the model object, never from environment variables.
"""

import importlib

__all__ = ["stack_for", "family", "SUPPORTED"]

_KERAS3_STACKS = {"tensorflow": "keras_tensorflow", "jax": "keras_jax", "torch": "keras_torch"}
SUPPORTED = "Keras 3 with the TensorFlow, JAX or PyTorch backend; tf-keras 2 (eager and graph mode)"


def family(model):
    """"keras3", "tf_keras" or None, from the modules of the model's classes.

    The class hierarchy, not `isinstance(model, keras.Model)`: bert4keras puts
    tf.keras in `sys.modules["keras"]`, so the name `keras` can mean either.
    """
    for cls in type(model).__mro__:
        if cls.__name__ != "Model":
            continue
        if cls.__module__.startswith("keras.src."):
            return "keras3"
        if cls.__module__.startswith("tf_keras."):
            return "tf_keras"
    return None


def stack_for(model):
    """The stack module that trains `model` (a `TypeError` for no Keras model,
    `NotImplementedError` for a stack not supported)."""
    family_name = family(model)
    if family_name == "keras3":
        import keras

        backend = keras.backend.backend()
        if backend not in _KERAS3_STACKS:
            raise NotImplementedError(
                f"keras_adv does not support the Keras 3 '{backend}' backend: it "
                f"trains nothing there. Supported: {SUPPORTED}. Set KERAS_BACKEND "
                f"to one of them before importing keras."
            )
        return importlib.import_module(f"keras_adv._stacks.{_KERAS3_STACKS[backend]}")
    if family_name == "tf_keras":
        import tensorflow as tf

        graph = not tf.compat.v1.executing_eagerly_outside_functions()
        return importlib.import_module("keras_adv._stacks.tf_keras_graph" if graph else "keras_adv._stacks.tf_keras")
    raise TypeError(
        f"Expected a compiled Keras model, got {type(model).__module__}."
        f"{type(model).__name__}."
    )
