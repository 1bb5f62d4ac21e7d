"""The sparse row path equals the dense computation, with repeated tokens."""

import numpy as np
import pytest
import tensorflow as tf

from keras_adv import FGM
from keras_adv._stacks.tf_rows import TouchedRows, add_gradients
from tests.testing import TestCase


def _random_slices(seed, vocab=50, occurrences=64, dim=6):
    rng = np.random.RandomState(seed)
    # Few distinct tokens, so most occur several times.
    indices = rng.randint(0, 12, size=occurrences).astype("int32")
    values = rng.normal(size=(occurrences, dim)).astype("float32")
    return tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([vocab, dim]))


class TestTouchedRows(TestCase):
    @pytest.mark.parametrize("jit", [False, True])
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_sparse_perturbation_equals_dense(self, seed, jit):
        slices = _random_slices(seed)
        matrix = tf.constant(np.random.RandomState(9).normal(size=(50, 6)).astype("float32"))

        @tf.function(jit_compile=jit)
        def sparse(values, indices):
            grad = tf.IndexedSlices(values, indices, tf.constant([50, 6]))
            touched = TouchedRows(grad)
            rows = touched.rows(grad)
            return touched.add_to(matrix, FGM(0.9).ascend(None, rows)), tf.norm(rows)

        perturbed, norm = sparse(slices.values, slices.indices)
        dense_grad = tf.convert_to_tensor(slices).numpy().astype("float64")
        self.assertAllClose(norm, np.sqrt(np.sum(dense_grad**2)), rtol=1e-6)
        expected = matrix.numpy() + 0.9 * dense_grad / np.sqrt(np.sum(dense_grad**2))
        self.assertAllClose(perturbed, expected, rtol=1e-6, atol=1e-6)
        # Rows of tokens not in the batch are untouched, bit for bit.
        untouched = np.setdiff1d(np.arange(50), slices.indices.numpy())
        self.assertBitEqual(perturbed.numpy()[untouched], matrix.numpy()[untouched])

    def test_later_gradients_map_onto_the_same_segments(self):
        first, later = _random_slices(0), _random_slices(0)
        later = tf.IndexedSlices(later.values * 2.0, later.indices, later.dense_shape)
        touched = TouchedRows(first)
        self.assertAllClose(touched.rows(later), 2.0 * touched.rows(first))

    def test_dense_gradient_is_the_whole_matrix(self):
        grad = tf.constant(np.random.RandomState(3).normal(size=(10, 3)).astype("float32"))
        touched = TouchedRows(grad)
        assert touched.is_dense
        self.assertAllClose(touched.add_to(tf.zeros((10, 3)), touched.rows(grad)), grad)

    def test_add_gradients_keeps_slices_sparse(self):
        a, b = _random_slices(0), _random_slices(1)
        total = add_gradients(a, b)
        assert isinstance(total, tf.IndexedSlices)
        self.assertAllClose(
            tf.convert_to_tensor(total), tf.convert_to_tensor(a) + tf.convert_to_tensor(b)
        )
        dense = tf.ones((50, 6))
        self.assertAllClose(add_gradients(a, dense), tf.convert_to_tensor(a) + 1.0)
