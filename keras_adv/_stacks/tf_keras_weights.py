"""tf-keras layers reading given values in place of their weights (AWP's
perturbed passes), as Keras 3's `StatelessScope` gives them: each layer
attribute holding a substituted variable holds the value inside the block,
set with `object.__setattr__` so tracking never sees it. Nothing is written,
so nothing needs restoring; a weight read other than through its layer's
attribute would be read unperturbed, which the passes detect and refuse.
"""

import contextlib

import tensorflow as tf

__all__ = ["substituted_weights"]


@contextlib.contextmanager
def substituted_weights(model, substitutes):
    """Inside, the layers of `model` read each `(variable, value)` of
    `substitutes` as `value` (cast as the variable would be read)."""
    if not substitutes:
        yield
        return
    import tf_keras

    values = {id(variable): (variable, value) for variable, value in substitutes}
    layers = [model] + [m for m in model.submodules if isinstance(m, tf_keras.layers.Layer)]
    swapped = []
    try:
        for layer in layers:
            for name, attribute in list(vars(layer).items()):
                if id(attribute) in values:
                    variable, value = values[id(attribute)]
                    object.__setattr__(layer, name, _as_read_by(layer, variable, value))
                    swapped.append((layer, name, attribute))
        yield
    finally:
        for layer, name, attribute in reversed(swapped):
            object.__setattr__(layer, name, attribute)


def _as_read_by(layer, variable, value):
    # Under mixed precision a layer's float32 weights are AutoCastVariables,
    # read in the compute dtype of the layer that holds them (its `__call__`
    # sets it).
    if hasattr(variable, "true_dtype") and layer.compute_dtype != value.dtype.name:
        return tf.cast(value, layer.compute_dtype)
    return value
