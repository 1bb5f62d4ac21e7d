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

    def test_inside_the_block_the_rows_hold_e_plus_r(self):
        model = linear_text_model()
        x, y = batch()
        before = params_of(model)
        grads = self._clean_gradient(model, x, y)
        assert isinstance(grads[0], tf.IndexedSlices)
        expected_r = reference.perturbation(before, x, y, "fgm", 0.6)
        with keras_adv.perturbed_embedding(model, "emb", grads[0], 0.6):
            inside = params_of(model)[0]
        self.assertAllClose(inside, before[0] + expected_r, rtol=1e-6, atol=1e-6)
        self.assertBitEqual(params_of(model)[0], before[0])

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

    def test_restores_bit_for_bit_when_the_block_raises(self):
        model = linear_text_model()
        weights = model.get_weights()
        weights[0][:2] = np.array([1e-30, -0.0], "float32")[:, None]
        model.set_weights(weights)
        x, y = batch()
        x[0, 0], x[1, 0] = 0, 1  # The special rows are perturbed.
        grads = self._clean_gradient(model, x, y)
        with pytest.raises(RuntimeError, match="boom"):
            with keras_adv.perturbed_embedding(model, "emb", grads[0], 5.0):
                assert not np.array_equal(params_of(model)[0], weights[0])
                raise RuntimeError("boom")
        self.assertBitEqual(model.get_weights()[0], weights[0])

    def test_pgd_method_object(self):
        model = linear_text_model()
        x, y = batch()
        before = params_of(model)
        grads = self._clean_gradient(model, x, y)
        method = keras_adv.PGD(epsilon=0.2, alpha=0.5)
        with keras_adv.perturbed_embedding(model, "emb", grads[0], method=method):
            inside = params_of(model)[0]
        g = reference.gradients(before, x, y)[1][0]
        expected = reference.project(0.5 * reference.l2_normalize(g), 0.2)
        self.assertAllClose(inside - before[0], expected, rtol=1e-5, atol=1e-6)

    def test_none_gradient(self):
        with pytest.raises(ValueError, match="does not depend on embedding"):
            with keras_adv.perturbed_embedding(linear_text_model(), "emb", None, 1.0):
                pass


class TestWritesMatchTheReader(TestCase):
    def test_keras3_embedding_gets_no_sparse_writes(self):
        # Keras 3 reads the whole matrix; a sparse write would switch the
        # variable to copy-on-read, and every later read would copy it.
        model = linear_text_model()
        x, y = batch()
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            (grad,) = tape.gradient(loss, [model.get_layer("emb").embeddings.value])
            with keras_adv.perturbed_embedding(model, "emb", grad, 0.5):
                return model(x)

        ops = {op.type for op in step.get_concrete_function(tf.constant(x), tf.constant(y)).graph.get_operations()}
        assert "AssignVariableOp" in ops
        assert not {t for t in ops if t.startswith("ResourceScatter")}
