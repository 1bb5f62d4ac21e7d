"""`perturbed_embedding`: the attack/restore pattern in a custom tf.GradientTape loop."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_adv
from tests import reference
from tests.models import batch, linear_text_model, params_of
from tests.testing import TestCase


class TestPerturbedEmbedding(TestCase):
    def _clean_gradient(self, model, x, y):
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    def _lookups_inside(self, model, gradient, x, **options):
        layer = model.get_layer("emb")
        with keras_adv.perturbed_embedding(model, "emb", gradient, **options):
            inside = np.asarray(layer(x), "float64")
            matrix_inside = layer.embeddings.numpy().copy()
        return inside, matrix_inside

    def test_inside_the_block_lookups_read_e_plus_r(self):
        model = linear_text_model()
        x, y = batch()
        before = params_of(model)
        grads = self._clean_gradient(model, x, y)
        assert isinstance(grads[0], tf.IndexedSlices)
        expected_r = reference.perturbation(before, x, y, "fgm", 0.6)
        inside, matrix_inside = self._lookups_inside(model, grads[0], x, epsilon=0.6)
        self.assertAllClose(inside, (before[0] + expected_r)[x], rtol=1e-6, atol=1e-6)
        # Nothing is written: the matrix is the same inside and after the block.
        self.assertBitEqual(matrix_inside, model.get_weights()[0])
        self.assertBitEqual(params_of(model)[0], before[0])
        # Outside the block, lookups are plain again and the layer is as it was.
        self.assertAllClose(model.get_layer("emb")(x), before[0][x], rtol=0, atol=0)
        assert "call" not in vars(model.get_layer("emb"))

    def test_a_dense_gradient_perturbs_the_same_rows(self):
        model = linear_text_model()
        x, y = batch()
        grads = self._clean_gradient(model, x, y)
        sparse, _ = self._lookups_inside(model, grads[0], x, epsilon=0.6)
        dense, _ = self._lookups_inside(model, tf.convert_to_tensor(grads[0]), x, epsilon=0.6)
        self.assertAllClose(dense, sparse, rtol=1e-6, atol=1e-7)

    def test_one_custom_step_matches_the_reference(self):
        model = linear_text_model()
        optimizer = keras.optimizers.SGD(0.5)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        x, y = batch()
        expected, _, _ = reference.adversarial_sgd_step(params_of(model), x, y, 0.5, "fgm", 0.6, "sum")

        @tf.function
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            with keras_adv.perturbed_embedding(model, "emb", grads[0], 0.6):
                with tf.GradientTape() as tape:
                    adversarial_loss = loss_fn(y, model(x, training=True))
                adversarial_grads = tape.gradient(adversarial_loss, model.trainable_variables)
            total = [keras_adv._stacks.tf_rows.add_gradients(g, a) for g, a in zip(grads, adversarial_grads)]
            optimizer.apply_gradients(zip(total, model.trainable_variables))

        train_step(tf.constant(x), tf.constant(y))
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_lookups_are_plain_again_when_the_block_raises(self):
        model = linear_text_model()
        x, y = batch()
        before = model.get_weights()
        grads = self._clean_gradient(model, x, y)
        with pytest.raises(RuntimeError, match="boom"):
            with keras_adv.perturbed_embedding(model, "emb", grads[0], 5.0):
                assert not np.array_equal(model.get_layer("emb")(x), before[0][x])
                raise RuntimeError("boom")
        self.assertWeightsBitEqual(model.get_weights(), before)
        self.assertBitEqual(model.get_layer("emb")(x), before[0][x])

    def test_pgd_method_object(self):
        model = linear_text_model()
        x, y = batch()
        before = params_of(model)
        grads = self._clean_gradient(model, x, y)
        method = keras_adv.PGD(epsilon=0.2, alpha=0.5)
        inside, _ = self._lookups_inside(model, grads[0], x, method=method)
        g = reference.gradients(before, x, y)[1][0]
        expected = reference.project(0.5 * reference.l2_normalize(g), 0.2)
        self.assertAllClose(inside - before[0][x], expected[x], rtol=1e-5, atol=1e-6)

    def test_none_gradient(self):
        with pytest.raises(ValueError, match="does not depend on embedding"):
            with keras_adv.perturbed_embedding(linear_text_model(), "emb", None, 1.0):
                pass
