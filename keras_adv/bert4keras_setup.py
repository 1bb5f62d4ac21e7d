"""Getting a bert4keras 0.11.5 notebook running on current TensorFlow.

bert4keras needs tf-keras on TensorFlow 2.16+, which takes two environment
flags set before anything touches `tf.keras`, and its optimizers subclass
`keras.optimizers.Optimizer`, which in tf-keras 2.21 is the new optimizer they
were not written for (`'Adam' object has no attribute '_set_hyper'`).
`prepare_bert4keras()` does both, once, when the user asks for it.
"""

import importlib
import os
import sys

__all__ = ["prepare_bert4keras"]

_FLAGS = {"TF_KERAS": "1", "TF_USE_LEGACY_KERAS": "1"}


def prepare_bert4keras():
    """Sets up tf-keras for bert4keras; call it before importing bert4keras.

    1. Sets `TF_KERAS=1` and `TF_USE_LEGACY_KERAS=1`, which bert4keras and
       TensorFlow read when `tf.keras` is first used.
    2. Imports `bert4keras.optimizers` with tf-keras's legacy `Optimizer` as
       the base its optimizers subclass, then puts tf-keras's own base back,
       so `bert4keras.optimizers.Adam` and the `extend_with_*` wrappers work
       and nothing else in tf-keras changes.

    Nothing happens to users who do not call it. Calling it again is harmless.

    Raises:
        RuntimeError: If Keras 3 or bert4keras were already loaded in a way
            this cannot fix (call it first in the notebook, or restart).

    Example:

    ```python
    import keras_adv
    keras_adv.prepare_bert4keras()

    from bert4keras.models import build_transformer_model
    from bert4keras.optimizers import Adam, extend_with_piecewise_linear_lr
    ```
    """
    bert4keras_loaded = sys.modules.get("bert4keras.backend")
    if bert4keras_loaded is not None and not bert4keras_loaded.is_tf_keras:
        raise RuntimeError(
            "bert4keras was imported before keras_adv.prepare_bert4keras() without "
            "TF_KERAS=1, so it is bound to the wrong Keras. Call it before importing "
            "bert4keras, or restart."
        )
    keras3_loaded = any(name == "keras.src" or name.startswith("keras.src.") for name in sys.modules)
    if bert4keras_loaded is None and keras3_loaded:
        raise RuntimeError(
            "Keras 3 is already loaded in this process (importing TensorFlow or "
            "keras without TF_USE_LEGACY_KERAS=1 loads it), and bert4keras would "
            "pick up its modules. Call keras_adv.prepare_bert4keras() before "
            "importing tensorflow, keras or bert4keras (first cell of the "
            "notebook), or restart."
        )
    os.environ.update(_FLAGS)
    if "bert4keras.optimizers" in sys.modules:
        return
    import tensorflow as tf

    optimizers = tf.keras.optimizers
    new_base = optimizers.Optimizer
    optimizers.Optimizer = optimizers.legacy.Optimizer
    try:
        importlib.import_module("bert4keras.optimizers")
    finally:
        optimizers.Optimizer = new_base
