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
import numpy as np
import pytest

assert keras.backend.backend() == "jax", (
    f"tests/keras3_jax runs with KERAS_BACKEND=jax (got {keras.backend.backend()!r}): "
    f"run it in its own process, e.g. `KERAS_BACKEND=jax python -m pytest tests/keras3_jax`."
)

import jax  # noqa: E402

import keras_adv  # noqa: E402
from tests.models import (  # noqa: E402
    LARGE_VOCAB, LARGE_VOCAB_DIM, LARGE_VOCAB_METHODS, large_vocabulary_batch,
    large_vocabulary_model,
)

VOCAB, DIM = LARGE_VOCAB, LARGE_VOCAB_DIM
METHODS = LARGE_VOCAB_METHODS
text_model, data = large_vocabulary_model, large_vocabulary_batch


def state_of(model):
    """The train step's state, as `fit` passes it (the model built by one step first)."""
    model.train_on_batch(*data())
    return tuple(
        tuple(v.value for v in variables)
        for variables in (model.trainable_variables, model.non_trainable_variables,
                          model.optimizer.variables, model.metrics_variables)
    )


def vocabulary_arrays(jaxpr, counts=None):
    """`{(primitive, shape): n}`: the arrays of `jaxpr` with VOCAB rows that
    its equations make, nested programs (jit, cond, custom_jvp) included."""
    counts = collections.Counter() if counts is None else counts
    for equation in jaxpr.eqns:
        for var in equation.outvars:
            shape = getattr(var.aval, "shape", ())
            if shape and shape[0] == VOCAB:
                counts[(equation.primitive.name, tuple(shape))] += 1
        for param in equation.params.values():
            for inner in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(inner, "jaxpr", inner)  # A ClosedJaxpr holds its Jaxpr.
                if hasattr(inner, "eqns"):
                    vocabulary_arrays(inner, counts)
    return counts


def train_step_arrays(model):
    state = state_of(model)
    traced = jax.make_jaxpr(lambda state, data: model.train_step(state, data))(state, data())
    return vocabulary_arrays(traced.jaxpr)


def gradient_arrays(model):
    """The V-row arrays of one pass's gradient of the loss w.r.t. the weights."""
    state = state_of(model)
    trainable, non_trainable, optimizer_variables, metrics = state
    x, y = data()

    def loss(trainable):
        return model.compute_loss_and_updates(
            trainable, non_trainable, metrics, x, y, None, training=True,
            optimizer_variables=optimizer_variables,
        )[0]

    return vocabulary_arrays(jax.make_jaxpr(jax.grad(loss))(trainable).jaxpr)


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
