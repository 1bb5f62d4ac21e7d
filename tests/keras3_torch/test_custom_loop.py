"""`perturbed_embedding` in a PyTorch custom loop: `loss.backward()`, the
matrix's dense `.grad`, the attack, and one update, as docs/custom_loops.md shows."""

import keras
import numpy as np
import pytest
import torch

import keras_adv
from tests import reference
from tests.models import batch, linear_text_model, params_of
from tests.testing import TestCase


def _gradients(model, loss):
    """`loss.backward()`, then each weight's `.grad`, taken off the weights."""
    model.zero_grad()
    loss.backward()
    return [v.value.grad for v in model.trainable_variables]


class TestPerturbedEmbeddingOnTorch(TestCase):
    def test_one_custom_step_matches_the_reference(self):
        model = linear_text_model()
        optimizer = keras.optimizers.SGD(0.5)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        x, y = batch()
        before = params_of(model)
        expected, _, _ = reference.adversarial_sgd_step(before, x, y, 0.5, "fgm", 0.6, "sum")

        grads = _gradients(model, loss_fn(y, model(x, training=True)))
        with keras_adv.perturbed_embedding(model, "emb", grads[0], 0.6) as perturbation:
            adversarial_grads = _gradients(model, loss_fn(y, model(x, training=True)))
        with torch.no_grad():
            optimizer.apply(keras_adv.add_gradients(grads, adversarial_grads), model.trainable_variables)

        expected_r = reference.perturbation(before, x, y, "fgm", 0.6)
        self.assertAllClose(perturbation, expected_r, rtol=1e-5, atol=1e-6)
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_lookups_are_plain_again_when_the_block_raises(self):
        model = linear_text_model()
        x, y = batch()
        before = model.get_weights()
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        grads = _gradients(model, loss_fn(y, model(x, training=True)))
        layer = model.get_layer("emb")
        with pytest.raises(RuntimeError, match="boom"):
            with keras_adv.perturbed_embedding(model, "emb", grads[0], 5.0):
                assert not np.array_equal(keras.ops.convert_to_numpy(layer(x)), before[0][x])
                raise RuntimeError("boom")
        self.assertWeightsBitEqual(model.get_weights(), before)
        self.assertBitEqual(keras.ops.convert_to_numpy(layer(x)), before[0][x])
        assert "call" not in vars(layer)
