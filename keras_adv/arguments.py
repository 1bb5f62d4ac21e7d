"""The user's scalar arguments, checked and made Python numbers, one way everywhere.

As Keras does, every real scalar of the right kind is accepted: a Python
number, a numpy scalar, a 0-d numpy array, or a backend's scalar tensor
(TensorFlow, JAX, PyTorch). Each becomes a Python `float`, `int` or `bool`,
so the method objects stay hashable and print plainly. Anything else gets
one `TypeError` of one shape, naming the argument and what it takes.
"""

import math
import numbers

import numpy as np

__all__ = ["positive", "non_negative", "count", "flag"]


def positive(name, value):
    """A finite float > 0."""
    number = float(_scalar(name, value, "a positive float", (numbers.Real,)))
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"`{name}` must be a positive finite float, got {value!r}.")
    return number


def non_negative(name, value):
    """A finite float >= 0."""
    number = float(_scalar(name, value, "a float >= 0", (numbers.Real,)))
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"`{name}` must be a finite float >= 0, got {value!r}.")
    return number


def count(name, value, minimum):
    """An int >= `minimum` (a float such as 2.0 is refused, as by Keras)."""
    number = int(_scalar(name, value, f"an int >= {minimum}", (numbers.Integral,)))
    if number < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return number


def flag(name, value):
    """True or False (numpy's and the backends' booleans included)."""
    return bool(_scalar(name, value, "True or False", (bool,)))


def _scalar(name, value, kind, types):
    """`value` as a Python scalar of one of `types` (bool counts only as a
    flag, never as a number), or the one TypeError."""
    item = _python_scalar(value)
    is_flag = isinstance(item, bool)
    if item is None or is_flag != (types == (bool,)) or not isinstance(item, types):
        raise TypeError(
            f"`{name}` must be {kind} (a Python or numpy scalar, a 0-d array or a "
            f"scalar tensor), got {value!r} ({type(value).__name__})."
        )
    return item


def _python_scalar(value):
    """The Python number or bool that `value` holds, or None if it holds none."""
    if isinstance(value, (bool, numbers.Number)) and not isinstance(value, np.generic):
        return value
    if isinstance(value, (str, bytes)):
        return None
    try:
        if hasattr(value, "numpy") and not isinstance(value, (np.ndarray, np.generic)):
            value = value.numpy()  # A TensorFlow (or CPU PyTorch) scalar tensor.
        array = np.asarray(value)
    except Exception:  # A symbolic tensor, or no array at all.
        return None
    if array.shape != () or array.dtype.kind not in "biuf":
        return None
    return array.item()
