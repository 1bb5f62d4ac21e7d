"""The sparse row path equals the dense computation, with repeated tokens."""

import numpy as np
import pytest
import tensorflow as tf

from keras_adv import FGM
from keras_adv._stacks.tf_rows import (
    RowsInPlace,
    RowsInPlaceUnderXla,
    TouchedRows,
    UndoLog,
    add_gradients,
)
from tests.testing import TestCase


def _random_slices(seed, vocab=50, occurrences=64, dim=6, lowest_token=0):
    rng = np.random.RandomState(seed)
    # Few distinct tokens, so most occur several times.
    indices = rng.randint(lowest_token, lowest_token + 12, size=occurrences).astype("int32")
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


class TestRowsInPlace(TestCase):
    """Rows moved in place equal the dense computation, for either way the
    model reads the matrix, and come back bit for bit."""

    @pytest.mark.parametrize("dense_reads", [False, True])
    @pytest.mark.parametrize("in_function", [False, True])
    def test_move_twice_then_restore(self, dense_reads, in_function):
        slices = _random_slices(5)
        matrix = np.random.RandomState(6).normal(size=(50, 6)).astype("float32")
        variable = tf.Variable(matrix)
        dense_grad = tf.convert_to_tensor(slices).numpy().astype("float64")
        unit = dense_grad / np.sqrt(np.sum(dense_grad**2))

        def moves():
            touched = TouchedRows(slices)
            rows = RowsInPlace(variable, touched, dense_reads=dense_reads)
            grad_rows = touched.rows(slices)
            rows.move(FGM(0.5).ascend(None, grad_rows))
            first = variable.value()
            rows.move(FGM(0.9).ascend(None, grad_rows), after=[first])  # A later PGD move.
            second = variable.value()
            with tf.control_dependencies([second]):
                rows.restore()
            return first, second

        first, second = (tf.function(moves) if in_function else moves)()
        self.assertAllClose(first, matrix + 0.5 * unit, rtol=1e-6, atol=1e-6)
        # From the original rows, not from the first move.
        self.assertAllClose(second, matrix + 0.9 * unit, rtol=1e-6, atol=1e-6)
        self.assertBitEqual(variable.numpy(), matrix)


def _moved(matrix, touched, slices, perturbation):
    """`matrix` with each token's row plus its segment's perturbation row, in float32."""
    expected = matrix.copy()
    distinct = len(np.unique(slices.indices))
    for segment, token in enumerate(touched.ids.numpy()[:distinct]):
        expected[token] = matrix[token] + perturbation.numpy()[segment]
    return expected


def _run_under_xla(write):
    @tf.function(jit_compile=True)
    def run():
        write()

    run()


class TestRowsInPlaceUnderXla(TestCase):
    """Each pass (XLA's path) sees `E + r` bit for bit, although its rows are
    written into the rows of the pass before, and the restore gives `E` back."""

    @pytest.mark.parametrize("jit", [False, True])
    @pytest.mark.parametrize("lowest_token", [0, 1])  # With and without row 0 in the batch.
    def test_every_pass_sees_the_original_plus_its_perturbation(self, jit, lowest_token):
        slices = _random_slices(7, lowest_token=lowest_token)
        matrix = np.random.RandomState(8).normal(size=(50, 6)).astype("float32")
        variable = tf.Variable(matrix)
        touched = TouchedRows(slices)
        # Three PGD-like passes, each with its own perturbation (zero on the
        # empty segments, as every method's is).
        perturbations = [touched.rows(slices) * scale for scale in (0.5, -2.0, 0.25)]

        @tf.function(jit_compile=jit)
        def passes():
            rows = RowsInPlaceUnderXla(variable, TouchedRows(slices))
            seen, after = [], [tf.constant(1.0)]
            for r in perturbations:
                rows.move(r, after=after)
                seen.append(variable.read_value())
                after = [tf.reduce_sum(seen[-1])]  # What the pass computed from its reads.
            rows.restore(after=after)
            return seen

        for matrix_seen, r in zip(passes(), perturbations):
            self.assertBitEqual(matrix_seen.numpy(), _moved(matrix, touched, slices, r))
        self.assertBitEqual(variable.numpy(), matrix)

    @pytest.mark.parametrize("after", [np.nan, np.inf, -1e30])
    def test_any_value_of_what_came_before_writes_the_same_rows(self, after):
        slices = _random_slices(2)
        matrix = np.random.RandomState(3).normal(size=(50, 6)).astype("float32")
        variable = tf.Variable(matrix)
        touched = TouchedRows(slices)
        rows = RowsInPlaceUnderXla(variable, touched)
        perturbation = touched.rows(slices)
        _run_under_xla(lambda: rows.move(perturbation, after=[tf.constant(after)]))
        self.assertBitEqual(variable.numpy(), _moved(matrix, touched, slices, perturbation))
        _run_under_xla(lambda: rows.restore(after=[tf.constant(after)]))
        self.assertBitEqual(variable.numpy(), matrix)

    def test_dense_gradient_moves_the_whole_matrix(self):
        matrix = np.random.RandomState(3).normal(size=(10, 3)).astype("float32")
        perturbation = np.random.RandomState(4).normal(size=(10, 3)).astype("float32")
        variable = tf.Variable(matrix)
        rows = RowsInPlaceUnderXla(variable, TouchedRows(tf.constant(perturbation)))
        for _ in range(2):
            rows.move(tf.constant(perturbation), after=[])
            self.assertBitEqual(variable.numpy(), matrix + perturbation)
        rows.restore(after=[])
        self.assertBitEqual(variable.numpy(), matrix)


class TestUndoLog(TestCase):
    """What a failed compiled step relies on: undo writes back exactly the
    rows still moved, and nothing once they are restored."""

    def _moved_rows(self):
        slices = _random_slices(3)
        matrix = np.random.RandomState(4).normal(size=(50, 6)).astype("float32")
        variable = tf.Variable(matrix)
        touched = TouchedRows(slices)
        rows = RowsInPlace(variable, touched, undo_log=UndoLog(variable))
        rows.move(FGM(5.0).ascend(None, touched.rows(slices)))
        return variable, matrix, rows

    def test_undo_puts_moved_rows_back_bit_for_bit(self):
        variable, matrix, rows = self._moved_rows()
        assert np.abs(variable.numpy() - matrix).max() > 0.1
        assert bool(rows.undo_log.undo())
        self.assertBitEqual(variable.numpy(), matrix)
        assert not bool(rows.undo_log.moved)

    def test_after_a_restore_undo_writes_nothing(self):
        variable, matrix, rows = self._moved_rows()
        rows.restore()
        self.assertBitEqual(variable.numpy(), matrix)
        variable.assign_add(tf.ones_like(variable))  # The optimizer's update.
        updated = variable.numpy()
        assert not bool(rows.undo_log.undo())
        self.assertBitEqual(variable.numpy(), updated)
