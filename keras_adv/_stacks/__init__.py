"""One module per training stack, each owning exactly that stack's step contract.

The stack is read from the model object, never from environment variables.
"""

import sys

__all__ = ["stack_for", "SUPPORTED"]

SUPPORTED = "Keras 3 with the TensorFlow backend"


def _is_tf_keras_model(model):
    # tf-keras is imported only by users who use it; if it is not loaded,
    # the model cannot be one of its models.
    tf_keras = sys.modules.get("tf_keras")
    return tf_keras is not None and isinstance(model, tf_keras.Model)


def stack_for(model):
    """Returns the stack module that trains `model`.

    Raises:
        TypeError: If `model` is not a Keras model.
        NotImplementedError: If its stack is not supported yet.
    """
    import keras

    if isinstance(model, keras.Model):
        backend = keras.backend.backend()
        if backend == "tensorflow":
            from keras_adv._stacks import keras_tensorflow

            return keras_tensorflow
        raise NotImplementedError(
            f"keras_adv does not support the Keras 3 '{backend}' backend yet. "
            f"Supported: {SUPPORTED}. Set KERAS_BACKEND=tensorflow before "
            f"importing keras."
        )
    if _is_tf_keras_model(model):
        raise NotImplementedError(
            f"keras_adv does not support tf-keras 2 models yet. Supported: {SUPPORTED}."
        )
    raise TypeError(
        f"Expected a compiled Keras model, got {type(model).__module__}."
        f"{type(model).__name__}."
    )
