"""No perturbed pass builds a V x d array that the plain step does not build.

JAX's gradient of the embedding matrix is dense: the plain step itself
builds V x d arrays (the gradient, a scatter-add into zeros, and Adam's
update). The traced train step (`jax.make_jaxpr`, every nested program
walked) is compared, array by array, with the plain step's: under
`objective="adversarial"` the perturbed passes differentiate only the
lookups' outputs, so the step builds exactly the plain step's V x d arrays;
under `"sum"` it builds one more gradient of the matrix (the clean pass's,
the same arrays as one pass's weight gradient) and their sum, nothing else.
"""

import collections

import keras
import pytest

assert keras.backend.backend() == "jax", (
    f"tests/keras3_jax runs with KERAS_BACKEND=jax (got {keras.backend.backend()!r}): "
    f"run it in its own process, e.g. `KERAS_BACKEND=jax python -m pytest tests/keras3_jax`."
)

import keras_adv  # noqa: E402
from tests import jax_arrays  # noqa: E402
from tests.models import (  # noqa: E402
    LARGE_VOCAB, LARGE_VOCAB_DIM, LARGE_VOCAB_METHODS, large_vocabulary_batch,
    large_vocabulary_model,
)

VOCAB, DIM = LARGE_VOCAB, LARGE_VOCAB_DIM
METHODS = LARGE_VOCAB_METHODS
text_model, data = large_vocabulary_model, large_vocabulary_batch


def built(model):
    """The model, built by one step (the train step's state as `fit` passes it)."""
    model.train_on_batch(*data())
    return model


def train_step_arrays(model):
    return jax_arrays.train_step_arrays(built(model), data(), VOCAB)


def gradient_arrays(model):
    """The V-row arrays of one pass's gradient of the loss w.r.t. the weights."""
    return jax_arrays.gradient_arrays(built(model), data(), VOCAB)


@pytest.fixture(scope="module")
def plain():
    return train_step_arrays(text_model())


@pytest.fixture(scope="module")
def one_gradient():
    return gradient_arrays(text_model())


def adversarial_arrays(objective, options):
    model = text_model()
    keras_adv.adversarial_training(model, "emb", 0.5, objective=objective, **options)
    return train_step_arrays(model)


def test_the_plain_step_builds_the_dense_gradient_and_adams_update(plain, one_gradient):
    # What the comparisons below compare with: JAX's dense gradient of the
    # matrix (zeros, then a scatter-add of the rows) and Adam's V x d update.
    assert one_gradient[("scatter-add", (VOCAB, DIM))] == 1
    assert sum(plain.values()) > sum(one_gradient.values()) > 0
    assert not one_gradient - plain  # The gradient is among the plain step's arrays,
    assert plain - one_gradient  # and Adam's besides (15 in all with Keras 3.15, JAX 0.10).


@pytest.mark.parametrize("method", METHODS)
def test_adversarial_objective_builds_what_the_plain_step_builds(plain, method):
    assert adversarial_arrays("adversarial", METHODS[method]) == plain


@pytest.mark.parametrize("method", METHODS)
def test_sum_objective_adds_one_gradient_and_the_sum(plain, one_gradient, method):
    # The clean pass's weight gradient, kept for the update, and its sum with
    # the perturbed pass's: the only V x d arrays beyond the plain step's.
    expected = plain + one_gradient + collections.Counter({("add", (VOCAB, DIM)): 1})
    assert adversarial_arrays("sum", METHODS[method]) == expected
