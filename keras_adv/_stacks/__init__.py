"""One module per training stack, each owning exactly that stack's step contract.

The stack is read from the model object, never from environment variables.
"""

__all__ = ["stack_for", "family", "SUPPORTED"]

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
    """Returns the stack module that trains `model`.

    Raises:
        TypeError: If `model` is not a Keras model.
        NotImplementedError: If its stack is not supported yet.
    """
    family_name = family(model)
    if family_name == "keras3":
        import keras

        backend = keras.backend.backend()
        if backend == "tensorflow":
            from keras_adv._stacks import keras_tensorflow

            return keras_tensorflow
        if backend == "jax":
            from keras_adv._stacks import keras_jax

            return keras_jax
        if backend == "torch":
            from keras_adv._stacks import keras_torch

            return keras_torch
        raise NotImplementedError(
            f"keras_adv does not support the Keras 3 '{backend}' backend: it "
            f"trains nothing there. Supported: {SUPPORTED}. Set KERAS_BACKEND "
            f"to one of them before importing keras."
        )
    if family_name == "tf_keras":
        import tensorflow as tf

        if tf.compat.v1.executing_eagerly_outside_functions():
            from keras_adv._stacks import tf_keras

            return tf_keras
        from keras_adv._stacks import tf_keras_graph

        return tf_keras_graph
    raise TypeError(
        f"Expected a compiled Keras model, got {type(model).__module__}."
        f"{type(model).__name__}."
    )
