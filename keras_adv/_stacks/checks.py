"""What a step checks while it runs: a schedule's epsilon; and how each
backend's compiled step raises where a check fails (`required`).

A constant epsilon, and a schedule's value at step 0, are checked at the call
(`arguments.py`); each later value in its own step, before any weight changes.
A check costs a comparison; the error's own work runs only where it fails.
"""

import numbers

import numpy as np

from keras_adv import arguments
from keras_adv.methods import math_for

__all__ = ["scheduled_epsilon", "required"]


def scheduled_epsilon(schedule, step_count):
    """`schedule(step_count)` (the update count, a variable or tensor) as a
    float32 scalar of the step's framework: a `TypeError` while the step is
    traced if it is no real number, a `ValueError` if it is negative or not
    finite (at once for a Python or numpy number, else when the step runs)."""
    value = schedule(step_count)
    if isinstance(value, (numbers.Number, str, bytes, np.ndarray, np.generic)) or value is None:
        value = arguments.schedule_value(schedule, value, _step_number(step_count))
    if type(value).__module__.startswith("tensorflow") or _is_tensorflow(step_count):
        import tensorflow as framework
    else:
        from keras import ops as framework
    try:
        tensor = framework.convert_to_tensor(value)
    except (TypeError, ValueError) as error:
        raise arguments.schedule_type_error(schedule, value) from error
    rank = getattr(tensor.shape, "rank", len(tensor.shape))
    dtype = getattr(tensor.dtype, "name", str(tensor.dtype)).split(".")[-1]
    if not dtype.startswith(("float", "int", "uint", "bfloat")) or rank not in (None, 0):
        raise arguments.schedule_type_error(schedule, value)
    value, step = framework.cast(tensor, "float32"), framework.convert_to_tensor(step_count)
    valid = (value >= 0) & math_for(value).isfinite(value)
    message = [f"The epsilon schedule {arguments.schedule_name(schedule)} gave", value, "at step", step,
               "; epsilon must be a finite number >= 0 at every step."]
    error = lambda v, s: arguments.schedule_value_error(schedule, float(v), int(s))
    return required(valid, value, error, (value, step), message)


def _step_number(step_count):
    try:
        return int(np.asarray(getattr(step_count, "value", step_count)))
    except Exception:  # A traced step count: its number is known only when it runs.
        return None


def _is_tensorflow(step_count):
    variable = getattr(step_count, "value", step_count)  # A Keras 3 variable wraps a tf one.
    return type(variable).__module__.startswith("tensorflow")


def required(valid, structure, error, values=(), message=None):
    """`structure` (tensors, or None), once `valid` (a boolean scalar) holds;
    where it does not, the step raises `error(*values)` (`values` read on the
    host).

    TensorFlow asserts (`message`, strings and tensors, or the error's text),
    and what the step goes on with flows through the assertion; under XLA,
    which drops assertions, the floats of `structure` become NaN instead.
    JAX calls back to the host from a branch run on failure only; PyTorch's
    step is eager.
    """
    framework = type(valid).__module__.split(".")[0]
    if framework == "tensorflow":
        import tensorflow as tf

        check = tf.debugging.Assert(valid, message or [str(error(*values))])
        with tf.control_dependencies([check]):
            return tf.nest.map_structure(
                lambda t: t if t is None or not t.dtype.is_floating else tf.where(valid, t, tf.cast(float("nan"), t.dtype)),
                structure, expand_composites=True,
            )
    if framework in ("jax", "jaxlib"):
        import jax

        def raise_on_host(*host_values):
            raise error(*host_values)

        jax.lax.cond(valid, lambda *v: None, lambda *v: jax.debug.callback(raise_on_host, *v), *values)
        return jax.tree.map(lambda t: jax.numpy.where(valid, t, jax.numpy.nan).astype(t.dtype)
                            if jax.numpy.issubdtype(t.dtype, jax.numpy.floating) else t, structure)
    if not bool(valid):
        raise error(*values)
    return structure
