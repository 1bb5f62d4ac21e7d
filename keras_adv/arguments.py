"""The user's scalar arguments (an epsilon schedule's values too), checked and
made Python numbers, one way everywhere.

As Keras does, every real scalar of the right kind is accepted: a Python
number, a numpy scalar, a 0-d numpy array, or a backend's scalar tensor
(TensorFlow, JAX, PyTorch). Each becomes a Python `float`, `int` or `bool`,
so the method objects stay hashable and print plainly. Anything else gets
one `TypeError` of one shape, naming the argument and what it takes.
"""

import math
import numbers

import numpy as np

__all__ = [
    "positive", "non_negative", "count", "flag", "first_epsilon", "schedule_value", "schedule_type_error",
    "schedule_value_error", "schedule_name",
]


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


def first_epsilon(schedule):
    """An epsilon schedule's value at step 0, checked at the call as a constant
    epsilon is (`schedule_value`)."""
    try:
        value = schedule(0)
        if getattr(value, "graph", None) is not None and not hasattr(value, "numpy"):
            # A graph tensor (eager execution disabled): a step count of 0
            # needs no variable, so a session of its own evaluates it.
            import tensorflow as tf

            with tf.compat.v1.Session(graph=value.graph) as session:
                value = session.run(value)
    except Exception as error:  # Whatever the callable raised, said at the call.
        raise TypeError(
            f"`epsilon` is callable, so it is taken as a schedule of the optimizer's "
            f"step count, but calling it with 0 failed: {error!r}. Pass a float, or a "
            f"callable such as a `keras.optimizers.schedules.LearningRateSchedule`."
        ) from error
    return schedule_value(schedule, value, 0)


def schedule_value(schedule, value, step=None):
    """`value`, what `schedule` gave at `step` (None where not known), as a
    float: a `TypeError` if it is no real number, a `ValueError` if it is
    negative or not finite."""
    item = _python_scalar(value)
    if isinstance(item, bool) or not isinstance(item, numbers.Real):
        raise schedule_type_error(schedule, value)
    if not math.isfinite(item) or item < 0:
        raise schedule_value_error(schedule, float(item), step)
    return float(item)


def schedule_name(schedule):
    return getattr(schedule, "__name__", None) or type(schedule).__name__


def schedule_type_error(schedule, value):
    return TypeError(
        f"The epsilon schedule {schedule_name(schedule)} gave {value!r} ({type(value).__name__}); "
        f"each step's epsilon must be a real number (a float or a scalar tensor). Make the "
        f"schedule return a number."
    )


def schedule_value_error(schedule, value, step=None):
    at = "" if step is None else f" at step {step}"
    return ValueError(
        f"The epsilon schedule {schedule_name(schedule)} gave {value!r}{at}; epsilon must be a "
        f"finite number >= 0 at every step. Fix the schedule (a ramp may start at 0), or clip its values."
    )


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
