"""The stack-neutral Keras 3 tests, run once per backend (the Makefile picks
it with KERAS_BACKEND before Keras loads)."""

import keras
import pytest


@pytest.fixture(autouse=True, scope="module")
def _quick_jax_compiles():
    # XLA's optimisation passes take about half the time of compiling a step
    # on a CPU (measured: a Gemma FGM step 5.5 s -> 2.9 s) and change nothing
    # but float rounding, which these tests' tolerances allow (their bit-exact
    # checks compare a step with itself). Restored after each module, so that
    # tests/keras3_jax, which reads compiled programs, sees them as `fit` does.
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)
