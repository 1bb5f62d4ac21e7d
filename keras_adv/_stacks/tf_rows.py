"""The embedding rows that a batch touches, in TensorFlow, on one replica or many.

The methods perturb the embedding matrix, and the gradient of the matrix is the
gradient w.r.t. the lookups' outputs summed per token id: each token's row is
the SUM of its occurrences, so duplicates are summed before the norm. Only the
rows of the batch's tokens are ever formed (no V x d tensor), and everything
keeps static shapes (a sort instead of `tf.unique`), so the step compiles under
XLA: the N token occurrences become N rows, the trailing ones empty (zeros),
which changes neither a norm nor a sum.

Under a distribution strategy the rows are those of the GLOBAL batch: every
replica learns every replica's ids (an all-gather of the int ids), adds its own
gradient into the global rows, and the rows are summed across replicas (an
all-reduce of N_global x d values). Every replica then holds the same
gradient, builds the same perturbation, and reads its own tokens' rows of it:
the step gives the single-device result for the same global batch.
"""

import tensorflow as tf

__all__ = ["TouchedRows", "add_gradients"]


def _flat_ids(ids_list):
    # bert4keras feeds token ids as floats; they are whole numbers.
    return tf.concat([tf.reshape(tf.cast(ids, tf.int32), [-1]) for ids in ids_list], axis=0)


def _flat_rows(tensors, dim):
    # The norm is taken in float32 even where the lookups are float16: a
    # loss-scaled float16 gradient would overflow in its square.
    return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1, dim]) for t in tensors], axis=0)


class TouchedRows:
    """The rows of the matrix that the batch's lookups touch.

    Built once per step from the ids of the clean pass; every later pass
    looks up the same tokens, and each lookup finds its token's row by id.

    Args:
        ids_list: The token-id tensor of each lookup of the clean pass.
        dim: The embedding dimension d.
    """

    def __init__(self, ids_list, dim):
        self.dim = dim
        self.replica = tf.distribute.get_replica_context()
        distributed = self.replica is not None and self.replica.num_replicas_in_sync > 1
        if not distributed:
            self.replica = None
        ids = _flat_ids(ids_list)
        if self.replica is not None:
            ids = self.replica.all_gather(ids, axis=0)
        self.num_rows = tf.shape(ids)[0]
        self._sorted_ids = tf.sort(ids)
        self._first_of_token = tf.concat(
            [tf.ones([1], tf.bool), tf.not_equal(self._sorted_ids[1:], self._sorted_ids[:-1])],
            axis=0,
        )
        # The row of each sorted occurrence: tokens numbered in id order.
        self._row_in_sorted_order = tf.cumsum(tf.cast(self._first_of_token, tf.int32)) - 1

    def norm_of_rows(self, matrix):
        """The L2 norm of the touched rows of `matrix` (each token once), a
        constant of the step: the unit of a relative epsilon."""
        if not isinstance(matrix, tf.Variable):
            matrix = matrix.value  # A Keras 3 variable wraps the tf.Variable.
        # A read of the whole matrix, then a gather, as a Keras 3 lookup does:
        # a sparse read would switch the variable to copy-on-read mode.
        rows = tf.cast(tf.gather(matrix.value(), self._sorted_ids), tf.float32)
        squares = tf.where(self._first_of_token, tf.reduce_sum(tf.square(rows), axis=1), 0.0)
        return tf.stop_gradient(tf.sqrt(tf.reduce_sum(squares)))

    def _row_of(self, ids):
        """The row of each id in `ids` (flat), and whether it is a touched token."""
        position = tf.searchsorted(self._sorted_ids, ids, side="left")
        position = tf.minimum(position, self.num_rows - 1)
        # tf.equal, not ==: a TF1 graph compares tensors by identity.
        touched = tf.equal(tf.gather(self._sorted_ids, position), ids)
        return tf.gather(self._row_in_sorted_order, position), touched

    def rows(self, ids_list, gradients):
        """The gradient of the touched rows of the matrix, duplicates summed.

        Args:
            ids_list: The ids of each lookup of the pass.
            gradients: The gradient w.r.t. each lookup's output.

        Returns:
            A float32 `[N, d]` tensor (`N` the token occurrences of the
            global batch), the same on every replica.
        """
        rows, _ = self._row_of(_flat_ids(ids_list))
        summed = tf.math.unsorted_segment_sum(_flat_rows(gradients, self.dim), rows, self.num_rows)
        if self.replica is not None:
            summed = self.replica.all_reduce(tf.distribute.ReduceOp.SUM, summed)
        return summed

    def at(self, ids, rows):
        """Each id's row of `rows` (zeros for an untouched token), shaped `ids.shape + [d]`.

        The rows are a constant of the pass that adds them: the update
        differentiates the loss at `E + r`, not how `r` came from the
        weights (a TF1 graph's `tf.gradients` would follow it otherwise).
        """
        rows = tf.stop_gradient(rows)
        flat = tf.reshape(tf.cast(ids, tf.int32), [-1])
        row, touched = self._row_of(flat)
        values = tf.where(touched[:, None], tf.gather(rows, row), tf.zeros_like(rows[:1]))
        return tf.reshape(values, tf.concat([tf.shape(ids), [self.dim]], axis=0))


def add_gradients(a, b):
    """Adds two gradients, keeping `tf.IndexedSlices` sparse when both are."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
        return tf.IndexedSlices(
            values=tf.concat([a.values, b.values], axis=0),
            indices=tf.concat([a.indices, tf.cast(b.indices, a.indices.dtype)], axis=0),
            dense_shape=a.dense_shape,
        )
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)
