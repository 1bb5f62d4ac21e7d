"""What a step checks while it runs: a schedule's epsilon, and that R-Drop's
two passes differ.

`adversarial_training` checks a constant epsilon at the call, and a
schedule's value at step 0. Later values are known only in the step, so each
step checks its own, there: a real number (else a `TypeError` while the step
is traced), finite and >= 0 (else the step raises an error naming the
schedule, the step and the value, before any weight changes). R-Drop on a
model without training-mode randomness would be a plain step at twice its
cost: its step raises instead. What a check costs is a comparison; the
error's own work runs only where it fails.

How a compiled step can raise differs by backend, and is written here once
(`required`): TensorFlow asserts (what the step goes on with flows through
the assertion, so it waits for it); JAX calls back to the host from a branch
that runs on failure only; PyTorch's step is eager Python. XLA on TensorFlow
(`jit_compile=True`) drops assertions, so there what failed becomes NaN (the
perturbation, the update, the step's loss), never a silently different step.
"""

import numbers

import numpy as np

from keras_adv.methods import math_for

__all__ = ["scheduled_epsilon", "first_value", "required", "RDROP_WITHOUT_RANDOMNESS"]

# Without quotes: TensorFlow's assertion escapes them.
RDROP_WITHOUT_RANDOMNESS = (
    "R-Drop: the two training passes of model {name} gave identical outputs. Nothing on "
    "the way to its outputs is random in training (no dropout), so R-Drop would be a plain "
    "step at twice its cost. Give the model dropout (keras.layers.Dropout(0.1), or "
    "dropout=0.1 in a KerasHub backbone), or use another method."
)


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
    if type(value).__module__.startswith("tensorflow") or _is_tensorflow(step_count):
        import tensorflow as framework
    else:
        from keras import ops as framework
    try:
        tensor = framework.convert_to_tensor(value)
    except (TypeError, ValueError) as error:
        raise _type_error(schedule, value) from error
    rank = getattr(tensor.shape, "rank", len(tensor.shape))
    if not _real_dtype(getattr(tensor.dtype, "name", str(tensor.dtype))) or rank not in (None, 0):
        raise _type_error(schedule, value)
    value, step = framework.cast(tensor, "float32"), framework.convert_to_tensor(step_count)
    valid = (value >= 0) & math_for(value).isfinite(value)
    message = [f"The epsilon schedule {_describe(schedule)} gave", value, "at step", step,
               "; epsilon must be a finite number >= 0 at every step."]
    return required(valid, value, lambda v, s: _value_error(schedule, float(v), int(s)), (value, step), message)


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


def required(valid, structure, error, values=(), message=None):
    """`structure` (tensors, or None), once `valid` (a boolean scalar) holds.

    Where it does not, the step raises `error(*values)` (`values`: tensors of
    the step, read on the host); on TensorFlow, `message` (a list of strings
    and tensors), or the error's text, is the assertion's. Under XLA on
    TensorFlow, which drops assertions, the floats of `structure` become NaN.
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
    # PyTorch's step runs eagerly: the value is on hand.
    if not bool(valid):
        raise error(*values)
    return structure
