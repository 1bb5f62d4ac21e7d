"""What depends on the Keras backend, behind one small interface.

Which models, which variants, how they are timed, how the memory measures
are combined and reported: the same on every backend. What differs is
gathered in one module a backend, `backends/<name>.py`, named as
`KERAS_BACKEND` spells it, which defines:

- `NAME`: that name.
- `STACKS`: `{stack: title}`, the stacks that run on it, in the report's
  order: `"keras3"` (Keras 3 on this backend) and, on TensorFlow only,
  `"tf_keras"` (tf-keras with a bert4keras model).
- `prepare(stack)`: what a stack's process does first, before the backend's
  library loads (bert4keras's flags for tf-keras).
- `device()`: `"GPU"` or `"CPU"`, where the steps run; and
  `describe_device(device)`: the report's line on how the steps run there.
- `jit_compile(device, xla)`: the models' `jit_compile`, what
  `jit_compile="auto"` picks on `device` (or XLA where asked, `--xla`, where
  the backend has a choice).
- `step_functions(stack, model, embedding_name, data, names, strategy=None)`:
  `{variant: call}` for the variants `names` (see `variants.py`), each
  `call()` running one step to the end, its results on the host: what the
  timings time and the memory measures measure. It leaves out
  `UNSUPPORTED_VARIANTS` (`{variant: why}`), which have no counterpart on it.
- `mirrored_strategy()`: a strategy over two logical CPU devices, for
  `--mirrored`; None where the backend has none.
- `MEMORY_ENV`: the environment of the processes that measure memory,
  `MEMORY_MEASURES`: the report's words on how the measures are taken, and
  `memory_measures(device)`: which of them it takes on `device` (maybe none).
- `allocator_peak_mib(call, device)`, `traced_peak_bytes(call, device)`,
  `clean_gradients_mib(model, data)`: the memory measures' readings (see
  `memory.py`).

A backend keras_adv does not support has no module: the benchmark would
time nothing but errors. On JAX and PyTorch only the `"keras3"` stack runs
(tf-keras and bert4keras are TensorFlow's).
"""

import importlib
import importlib.util

# Keras 3's backends that the benchmark knows of; those with a module here run.
NAMES = ("tensorflow", "jax", "torch")


def load(name):
    """The module of backend `name`, one of `NAMES`.

    Raises:
        NotImplementedError: If the benchmark has no module for it yet.
    """
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    runs_on = [other for other in NAMES if importlib.util.find_spec(f"{__name__}.{other}")]
    raise NotImplementedError(
        f"The benchmark has no module for Keras 3's {name!r} backend, so it has nothing to "
        f"time on it. It runs on: {', '.join(runs_on)}."
    )
