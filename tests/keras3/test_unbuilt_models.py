"""Models that are not built when the one line is called (a subclassed model,
a `Sequential` without an `Input`), in the README's order: compile, the one
line, fit. The embedding is found by its layer, and the first step, where the
model is built, trains as for a built model (against the numpy reference)."""

import keras
import numpy as np
import pytest

import keras_adv
from tests import reference
from tests.models import CLASSES, DIM, VOCAB, batch
from tests.testing import TestCase

LR = 0.5


def _initial_params():
    rng = np.random.RandomState(7)
    return [
        rng.normal(0, 0.5, (VOCAB, DIM)).astype("float32"),
        rng.normal(0, 0.5, (DIM, CLASSES)).astype("float32"),
        rng.normal(0, 0.1, (CLASSES,)).astype("float32"),
    ]


def _layers(params):
    E, W, b = params
    return [
        keras.layers.Embedding(VOCAB, DIM, name="emb", embeddings_initializer=keras.initializers.Constant(E)),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(CLASSES, kernel_initializer=keras.initializers.Constant(W),
                           bias_initializer=keras.initializers.Constant(b)),
    ]


class Subclassed(keras.Model):
    def __init__(self, params):
        super().__init__()
        self.emb, self.pool, self.dense = _layers(params)

    def call(self, tokens):
        return self.dense(self.pool(self.emb(tokens)))


MODELS = {
    "sequential without Input": lambda params: keras.Sequential(_layers(params)),
    "subclassed": Subclassed,
}


class TestUnbuiltModels(TestCase):
    @pytest.mark.parametrize("kind", list(MODELS))
    @pytest.mark.parametrize("method,options", [("fgm", {}), ("pgd", dict(steps=2, alpha=0.4))])
    def test_first_step_matches_the_reference(self, kind, method, options):
        params = _initial_params()
        model = MODELS[kind](params)
        model.compile(optimizer=keras.optimizers.SGD(LR),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        assert not model.built
        keras_adv.adversarial_training(model, "emb", 0.7, method=method, **options)
        x, y = batch()
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, _, _ = reference.adversarial_sgd_step(
            [p.astype("float64") for p in params], x, y, LR, method, 0.7, "sum", **options
        )
        for actual, want in zip(model.get_weights(), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_a_variable_path_of_an_unbuilt_model_says_to_build_it(self):
        model = MODELS["subclassed"](_initial_params())
        model.compile(optimizer="sgd", loss="mse")
        with pytest.raises(ValueError, match=r"not built yet.*Name the embedding layer, or build the model first.*'emb' \(Embedding, 20 x 4, not built yet\)"):
            keras_adv.adversarial_training(model, "emb/embeddings")
