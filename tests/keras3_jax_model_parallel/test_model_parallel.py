"""`keras.distribution.ModelParallel` with the backbone's own layout map
(`GemmaBackbone.get_layout_map`: the token embedding sharded along the
vocabulary over the "model" axis and along its width over "batch", the
attention and feed-forward kernels sharded too) gives the single-device step.

A tiny random KerasHub `GemmaCausalLM` (tests/large_models.py; tied
embeddings: the output projection reads the sharded matrix too) takes one
`fit` step on meshes of 2 (1 x 2: a model axis only) and 8 (2 x 4: a data
axis too, the vocabulary in four shards) of this process's eight CPU devices (conftest.py), each a fresh distribution set for
the step and reset after it, from the same initial weights and batch as a
single-device step: every method gives the single-device weights and logs.
Every array of keras_adv's JAX step is global (the compiler partitions it
and adds the collectives), so the touched rows and the norms are the whole
batch's, wherever they are held.

What each shard holds: in the program each device runs (compiled as `fit`
compiles it, tests/jax_arrays.py), the plain step has no array with a
dimension of the vocabulary's size (the matrix, its gradient and the logits
stay sharded along it); no method adds a matrix of that size, and for FGM,
FGSM, PGD and per-example FGM the global program builds the V x d arrays
that tests/keras3_jax/test_no_dense_matrix.py allows, nothing more. Nor
does any method gather the logits along the vocabulary (VAT's divergence
sums each example's [positions, vocabulary] terms where they are held).
"""

import collections
import functools

import jax
import keras
import keras_hub
import numpy as np
import pytest

import keras_adv
from tests import jax_arrays
from tests.large_models import HIDDEN, causal_batch, compile_sgd, gemma
from tests.testing import TestCase

# The meshes divide the vocabulary and the heads by their "model" axis, the
# width and the batch (4) by "batch". 96 rows, and the 48 or 24 of a shard,
# are no other dimension of the step's arrays.
VOCAB = 96
SIZES = dict(vocabulary_size=VOCAB, num_query_heads=4, num_key_value_heads=4)
LR = 0.5
MESHES = {"2 devices 1x2": (1, 2), "8 devices 2x4": (2, 4)}

METHODS = {
    "fgm": dict(method="fgm"),
    "fgsm": dict(method="fgsm"),
    "pgd": dict(method="pgd", steps=2),
    "fgm per example": dict(method="fgm", per_example=True),
    "freelb": dict(method="freelb", steps=2),
    # A probe of 1 (relative, as the default 0.1): the power iteration's
    # difference of two divergences is then far from float32's rounding.
    "vat": dict(method=keras_adv.VAT(xi=1.0)),
    "gradient penalty per example": dict(method=keras_adv.GradientPenalty(), per_example=True),
    "gradient penalty": dict(method=keras_adv.GradientPenalty()),
    "awp": dict(method="awp"),
    "neftune": dict(method="neftune"),
    "rdrop": dict(method="rdrop"),
}
# R-Drop compares two passes' dropout: its model has some. The same seed
# draws the same masks on every mesh (JAX's random bits do not depend on how
# an array is sharded).
DROPOUT = {"rdrop": 0.1}
# The methods whose global V x d arrays test_no_dense_matrix.py counts.
ROW_METHODS = ("fgm", "fgsm", "pgd", "fgm per example")


def mesh_distribution(shape):
    """A `ModelParallel` over the first `data x model` devices, laid out by
    `GemmaBackbone.get_layout_map`."""
    data, model = shape
    mesh = keras.distribution.DeviceMesh(shape, ("batch", "model"), devices=jax.devices()[: data * model])
    layout_map = keras_hub.models.GemmaBackbone.get_layout_map(mesh)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def trained(options, shape=None, initial=None, inspect=None, dropout=0.0):
    """One `fit` step of the causal LM (of `dropout`) with `options` (None:
    plain) from the weights `initial` (None: the seed's), on the mesh `shape`
    (None: one device): `(initial weights, weights after, logs,
    inspect(model, batch) before the step)`. The distribution is set for the
    step and reset after it."""
    keras.backend.clear_session()  # It resets the distribution: set it after.
    keras.utils.set_random_seed(0)
    keras.distribution.set_distribution(None if shape is None else mesh_distribution(shape))
    try:
        model = compile_sgd(gemma(**SIZES, dropout=dropout), LR)
        if initial is not None:
            model.set_weights(initial)
        before = model.get_weights()
        if options is not None:
            # AWP perturbs weights; R-Drop, nothing.
            embedding = None if options["method"] in ("awp", "rdrop") else "token_embedding"
            keras_adv.adversarial_training(model, embedding, **options)
        x, y, sample_weight = batch = causal_batch()
        found = inspect(model, batch) if inspect else None
        history = model.fit(x, y, sample_weight=sample_weight, batch_size=len(y), shuffle=False,
                            verbose=0).history
        return before, model.get_weights(), {k: v[0] for k, v in history.items()}, found
    finally:
        keras.distribution.set_distribution(None)


@functools.cache
def single_device(method, plain=False):
    """The single-device step of `method` (None, or `plain`: the plain step of
    the method's model), computed once: `(initial weights, weights after, logs)`."""
    options = None if method is None or plain else METHODS[method]
    return trained(options, dropout=DROPOUT.get(method, 0.0))[:3]


def _inspect(model, batch):
    """What a step on the current mesh holds: the matrix's sharding (spec,
    shards' shapes, devices), every array of the program a device runs
    (`shard_arrays`: compiled here, `fit` then runs it), and the global
    V-row arrays of the step and of one gradient."""
    matrix = model.backbone.token_embedding.embeddings.value
    return dict(
        spec=tuple(matrix.sharding.spec),
        shard_shapes={shard.data.shape for shard in matrix.addressable_shards},
        devices=len(matrix.sharding.device_set),
        on_shards=jax_arrays.shard_arrays(model, batch),
        step=jax_arrays.train_step_arrays(model, batch, VOCAB),
        gradient=jax_arrays.gradient_arrays(model, batch, VOCAB),
    )


@functools.cache
def distributed(method, shape):
    """The step of `method` (None: plain) on mesh `shape`, from the
    single-device step's initial weights, computed once:
    `(initial weights, weights after, logs, _inspect(...))`."""
    options = None if method is None else METHODS[method]
    return trained(options, shape, single_device(method)[0], _inspect, DROPOUT.get(method, 0.0))


def full_vocabulary(found, matrices):
    """The arrays on a shard with a dimension of the whole vocabulary:
    matrices (at most 2 dimensions: the matrix, its gradient, their
    transposes) or, if not `matrices`, activations (logits)."""
    arrays = jax_arrays.with_dimension(found["on_shards"], VOCAB)
    return collections.Counter({k: n for k, n in arrays.items() if (len(k[1]) <= 2) == matrices})


def _ids(parameters):
    return list(parameters)


SHAPES = pytest.mark.parametrize("shape", MESHES.values(), ids=_ids(MESHES))
EACH_METHOD = pytest.mark.parametrize("method", METHODS, ids=_ids(METHODS))


class TestModelParallel(TestCase):
    def assertSameStep(self, actual, expected):
        _, weights, logs, _ = actual
        _, want, want_logs = expected
        assert set(logs) == set(want_logs)
        for name in logs:
            self.assertAllClose(logs[name], want_logs[name], rtol=1e-5, atol=1e-7, msg=name)
        for got, wanted in zip(weights, want):
            self.assertAllClose(got, wanted, rtol=1e-5, atol=1e-6)

    @SHAPES
    def test_plain_step_is_sharded_and_single_device(self, shape):
        # What the methods are compared with. The layout map shards the
        # matrix over the whole mesh, and Keras's own step gives the
        # single-device weights.
        step = distributed(None, shape)
        found = step[3]
        data, model = shape
        assert found["spec"] == ("model", "batch") and found["devices"] == data * model
        assert found["shard_shapes"] == {(VOCAB // model, HIDDEN // data)}
        self.assertSameStep(step, single_device(None))
        # No shard holds an array of the vocabulary's size; the shards'
        # own rows are there (what the check reads is what a device holds).
        assert not jax_arrays.with_dimension(found["on_shards"], VOCAB)
        assert jax_arrays.with_dimension(found["on_shards"], VOCAB // model)

    @SHAPES
    @EACH_METHOD
    def test_one_step_equals_the_single_device_step(self, method, shape):
        # The method changes the plain step of its model (R-Drop's has dropout)
        # far beyond the tolerance.
        expected = single_device(method)
        plain = single_device(method, plain=True) if method in DROPOUT else single_device(None)
        assert max(np.abs(a - p).max() for a, p in zip(expected[1], plain[1])) > 1e-4
        self.assertSameStep(distributed(method, shape), expected)

    @SHAPES
    @EACH_METHOD
    def test_no_vocabulary_matrix_beyond_the_plain_steps(self, method, shape):
        # On a shard: the matrix, its gradient and any perturbation of it
        # stay sharded as the layout map shards the matrix.
        found, plain = distributed(method, shape)[3], distributed(None, shape)[3]
        assert not full_vocabulary(found, True) - full_vocabulary(plain, True)
        if method in ROW_METHODS:
            # The global program, as test_no_dense_matrix.py counts it
            # (objective "sum"): the plain step's V x d arrays, one more
            # gradient of the matrix and their sum.
            assert found["step"] == plain["step"] + plain["gradient"] + collections.Counter(
                {("add", (VOCAB, HIDDEN)): 1})

    @SHAPES
    @pytest.mark.parametrize("method", METHODS, ids=_ids(METHODS))
    def test_no_full_vocabulary_logits_beyond_the_plain_steps(self, method, shape):
        found, plain = distributed(method, shape)[3], distributed(None, shape)[3]
        assert not full_vocabulary(found, False) - full_vocabulary(plain, False)
