"""A schedule's epsilon, checked at every step where the step uses it.

`adversarial_training` checks a constant epsilon at the call, and a
schedule's value at step 0. Later values are known only in the step, so each
step checks its own, there: a real number (else a `TypeError` while the step
is traced), finite and >= 0 (else the step raises an error naming the
schedule, the step and the value, before any weight changes). What the check
costs is a scalar comparison; the error's own work runs only on a bad value.

How a compiled step can raise differs by backend, and is written here once:
TensorFlow asserts (the value flows through the assertion, so the passes
wait for it); JAX calls back to the host from a branch that runs on a bad
value only; PyTorch's step is eager Python. XLA on TensorFlow
(`jit_compile=True`) drops assertions, so there a bad value becomes NaN: the
perturbation and the step's loss are then NaN, never a silently different
step.
"""

import numbers

import numpy as np

__all__ = ["scheduled_epsilon", "first_value"]


def scheduled_epsilon(schedule, step_count):
    """`schedule(step_count)` as a float32 scalar of the step's framework, checked.

    Args:
        schedule: The user's callable of the optimizer's update count.
        step_count: The optimizer's update count (a variable or tensor of
            the step's framework).

    Returns:
        The value, a float32 scalar.

    Raises:
        TypeError: If the schedule gives something other than a real number.
        ValueError: If it gives a negative or non-finite number (a Python or
            numpy number, at once; a tensor, when the step runs).
    """
    value = schedule(step_count)
    if _is_python_or_numpy(value):
        value = _checked_number(schedule, value, step_count)
    framework = type(value).__module__.split(".")[0]
    if framework == "tensorflow" or _is_tensorflow(step_count):
        return _tensorflow_checked(schedule, value, step_count)
    from keras import ops

    try:
        value = ops.convert_to_tensor(value)
    except (TypeError, ValueError) as error:
        raise _type_error(schedule, value) from error
    if not _real_dtype(str(value.dtype)):
        raise _type_error(schedule, value)
    value = ops.cast(value, "float32")
    if framework == "jax" or "jax" in type(value).__module__:
        return _jax_checked(schedule, value, step_count)
    # PyTorch's step runs eagerly: the value is on hand.
    _checked_number(schedule, float(value), step_count)
    return value


def first_value(schedule):
    """The schedule's epsilon at step 0, a Python float, checked as a constant
    epsilon is (`adversarial_training` calls it).

    Raises:
        TypeError: If calling the schedule with 0 fails, or it gives no number.
        ValueError: If it gives a negative or non-finite number.
    """
    try:
        value = schedule(0)
        if getattr(value, "graph", None) is not None and not hasattr(value, "numpy"):
            # A graph tensor (eager execution disabled): a step count of 0
            # needs no variable, so a session of its own evaluates it.
            import tensorflow as tf

            with tf.compat.v1.Session(graph=value.graph) as session:
                value = session.run(value)
        elif not _is_python_or_numpy(value):
            value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    except Exception as error:  # Whatever the callable raised, said at the call.
        raise TypeError(
            f"`epsilon` is callable, so it is taken as a schedule of the optimizer's "
            f"step count, but calling it with 0 failed: {error!r}. Pass a float, or a "
            f"callable such as a `keras.optimizers.schedules.LearningRateSchedule`."
        ) from error
    return _checked_number(schedule, value, 0)


def _is_python_or_numpy(value):
    return isinstance(value, (numbers.Number, str, bytes, np.ndarray, np.generic)) or value is None


def _real_dtype(dtype):
    name = dtype.split(".")[-1]
    return name.startswith(("float", "int", "uint", "bfloat"))


def _describe(schedule):
    return getattr(schedule, "__name__", None) or type(schedule).__name__


def _step_number(step_count):
    try:
        return int(np.asarray(getattr(step_count, "value", step_count)))
    except Exception:  # A traced step count: its number is known only when it runs.
        return None


def _type_error(schedule, value):
    return TypeError(
        f"The epsilon schedule {_describe(schedule)} gave {value!r} "
        f"({type(value).__name__}); each step's epsilon must be a real number "
        f"(a float or a scalar tensor). Make the schedule return a number."
    )


def _value_error(schedule, value, step):
    at = "" if step is None else f" at step {step}"
    return ValueError(
        f"The epsilon schedule {_describe(schedule)} gave {value!r}{at}; epsilon must "
        f"be a finite number >= 0 at every step. Fix the schedule (a ramp may start at 0), "
        f"or clip its values."
    )


def _checked_number(schedule, value, step_count):
    """A Python or numpy value, checked now."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise _type_error(schedule, value)
    array = np.asarray(value)
    if array.shape != () or not _real_dtype(str(array.dtype)):
        raise _type_error(schedule, value)
    number = float(array)
    if not np.isfinite(number) or number < 0:
        raise _value_error(schedule, number, _step_number(step_count))
    return number


def _is_tensorflow(step_count):
    variable = getattr(step_count, "value", step_count)  # A Keras 3 variable wraps a tf one.
    return type(variable).__module__.startswith("tensorflow")


def _tensorflow_checked(schedule, value, step_count):
    import tensorflow as tf

    try:
        value = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as error:
        raise _type_error(schedule, value) from error
    if not (value.dtype.is_floating or value.dtype.is_integer) or value.shape.rank not in (None, 0):
        raise _type_error(schedule, value)
    value = tf.cast(value, tf.float32)
    valid = tf.logical_and(tf.math.is_finite(value), value >= 0)
    check = tf.debugging.Assert(
        valid,
        [f"The epsilon schedule {_describe(schedule)} gave", value, "at step",
         tf.convert_to_tensor(step_count), "; epsilon must be a finite number >= 0 at every step."],
    )
    with tf.control_dependencies([check]):
        return tf.where(valid, value, float("nan"))


def _jax_checked(schedule, value, step_count):
    import jax
    import jax.numpy as jnp

    step = jnp.asarray(step_count)

    def raise_on_host(bad_value, bad_step):
        raise _value_error(schedule, float(bad_value), int(bad_step))

    valid = jnp.logical_and(jnp.isfinite(value), value >= 0)
    jax.lax.cond(
        valid, lambda v, s: None, lambda v, s: jax.debug.callback(raise_on_host, v, s), value, step
    )
    return jnp.where(valid, value, jnp.nan)
