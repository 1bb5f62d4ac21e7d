"""The rows of an embedding matrix that a batch touches, in TensorFlow.

The gradient of a lookup comes back as `tf.IndexedSlices` with one row per
token occurrence, duplicates not summed. The perturbation needs the gradient of
the matrix, in which each token's row is the SUM of its occurrences, so the
duplicates are summed before the norm. Everything keeps static shapes (a sort
instead of `tf.unique`), so the step compiles under XLA; the N occurrence rows
become N segments, the trailing ones empty (all zeros, at row 0), which changes
neither a norm nor a sum.

A gradient that comes back dense (an embedding also used as a dense matrix,
e.g. a tied output projection) is handled as the whole matrix.
"""

import tensorflow as tf

__all__ = [
    "TouchedRows",
    "RowsInPlace",
    "RowsInPlaceUnderXla",
    "UndoLog",
    "add_gradients",
    "tensors_of",
    "switch_off_copy_on_read",
]


class TouchedRows:
    """The embedding rows that a gradient touches, and how to reach them.

    Built once from the first (clean) gradient of a step; every later pass of
    the same step looks up the same tokens in the same order, so its gradient
    maps onto the same segments.

    Args:
        gradient: The gradient w.r.t. the embedding matrix, a
            `tf.IndexedSlices` or a dense `tf.Tensor`.
    """

    def __init__(self, gradient):
        if not isinstance(gradient, tf.IndexedSlices):
            self.ids = None  # Dense: every row.
            return
        indices = gradient.indices
        occurrences = tf.shape(indices)[0]
        order = tf.argsort(indices, stable=True)
        sorted_ids = tf.gather(indices, order)
        starts_new_token = tf.concat(
            [tf.ones([1], tf.bool), tf.not_equal(sorted_ids[1:], sorted_ids[:-1])], axis=0
        )
        segment_in_order = tf.cumsum(tf.cast(starts_new_token, tf.int32)) - 1
        # The segment of each occurrence, in the gradient's own order.
        self.segments = tf.scatter_nd(order[:, None], segment_in_order, [occurrences])
        self.num_segments = occurrences
        # Empty segments get the lowest int from the max; send them to row 0,
        # where they add zeros.
        self.ids = tf.maximum(
            tf.math.unsorted_segment_max(indices, self.segments, occurrences),
            tf.zeros([], indices.dtype),
        )

    @property
    def is_dense(self):
        return self.ids is None

    def rows(self, gradient):
        """Returns the gradient of the touched rows, duplicates summed.

        Args:
            gradient: A gradient of the same lookup structure as the one this
                object was built from.

        Returns:
            A `[num_segments, d]` tensor, or the dense `[V, d]` gradient.
        """
        if self.is_dense:
            return tf.convert_to_tensor(gradient)
        return tf.math.unsorted_segment_sum(
            gradient.values, self.segments, self.num_segments
        )

    def add_to(self, matrix, rows):
        """Returns `matrix` with `rows` added to the touched rows (a new tensor)."""
        if self.is_dense:
            return matrix + tf.cast(rows, matrix.dtype)
        return tf.tensor_scatter_nd_add(
            matrix, self.ids[:, None], tf.cast(rows, matrix.dtype)
        )


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


def tensors_of(structure):
    """The tensors in a nested `structure` (gradients as `IndexedSlices`
    included, as their parts), without the `None`s: what a write waits for."""
    return [t for t in tf.nest.flatten(structure, expand_composites=True) if t is not None]


class RowsInPlace:
    """Moves the touched rows of an embedding variable in place, and back exactly.

    Writing only the touched rows is the cheapest perturbation. The rows are
    restored from a copy taken before the first write, never by subtracting
    `r`, so they come back bit for bit.

    How the model reads the matrix decides what a sparse write costs:

    - Sparse gathers (tf-keras's `ResourceGather`) read the rows in place.
      TensorFlow puts the variable in copy-on-read mode at its first sparse
      access, which sparse gathers do not mind.
    - Whole-matrix reads (Keras 3 reads the matrix, then gathers;
      `dense_reads=True`) alias the variable's buffer unless it is in
      copy-on-read mode, where every read copies the matrix (measured:
      1 ms -> 220 ms per lookup at 250000 x 256). So copy-on-read is switched
      off after each write (`DisableCopyOnRead`), and the copy of the rows is
      taken by a whole-matrix read too, never by a sparse gather, which would
      switch it on. A sparse write copies the whole matrix (copy-on-write)
      while a tensor read from it is still alive, so every write must wait,
      through `after`, until the previous pass has consumed its reads.
      `DisableCopyOnRead` has no XLA kernel: inside XLA, use
      `RowsInPlaceUnderXla`, or `sparse_writes=False`, which writes the
      whole perturbed matrix.

    Args:
        variable: The embedding `tf.Variable`.
        touched: The `TouchedRows` of the batch.
        sparse_writes: Write only the touched rows.
        dense_reads: The model reads the whole matrix (see above).
        undo_log: Optional `UndoLog` of `variable`: the first move records the
            copy in it and the restore empties it, so that a compiled step
            that fails in between can still be undone from Python.
    """

    def __init__(self, variable, touched, *, sparse_writes=True, dense_reads=False, undo_log=None):
        self.variable = variable
        self.touched = touched
        self.sparse_writes = sparse_writes and not touched.is_dense
        self.dense_reads = dense_reads
        self.undo_log = undo_log
        if touched.is_dense:
            self.ids = tf.range(tf.shape(variable)[0])
            self.backup = tf.identity(variable.read_value())
        else:
            self.ids = touched.ids
            source = variable.value() if dense_reads else variable
            self.backup = tf.gather(source, touched.ids)
        self.moved = False

    def move(self, perturbation, after=()):
        """Sets the touched rows to `original + perturbation`.

        Args:
            perturbation: The perturbation rows.
            after: Tensors or ops that must run first: what the previous pass
                computed from its reads (its loss and gradients). Automatic
                control dependencies order a write after the reads of the
                variable, not after the ops that consume them; a TF1 graph
                has none, so there it must name the reads too.

        Returns:
            The op that wrote the rows.
        """
        perturbation = tf.cast(perturbation, self.variable.dtype)
        dependencies = [self.backup, *after]
        if self.moved:  # A later PGD pass: the log already holds the originals.
            dependencies.append(self._put_back(after))
        elif self.undo_log is not None:
            dependencies.append(self.undo_log.record(self.ids, self.backup))
        with tf.control_dependencies(dependencies):
            if not self.sparse_writes:
                written = tf.raw_ops.AssignVariableOp(
                    resource=self.variable.handle,
                    value=self.touched.add_to(self.variable.read_value(), perturbation),
                )
            else:
                # Adding lets the empty segments (zeros at row 0) coexist with
                # a real row 0; an update with duplicate indices would not.
                written = self._keep_reads_aliasing(tf.raw_ops.ResourceScatterAdd(
                    resource=self.variable.handle, indices=self.touched.ids, updates=perturbation
                ))
        self.moved = True
        return written

    def restore(self, after=()):
        """Puts the original rows back, bit for bit; returns the op that did
        (and then noted in the undo log, when there is one, that none are moved)."""
        written = self._put_back(after)
        self.moved = False
        if self.undo_log is None:
            return written
        with tf.control_dependencies([written]):
            return self.undo_log.clear()

    def _put_back(self, after):
        with tf.control_dependencies([self.backup, *after]):
            if self.touched.is_dense:
                written = tf.raw_ops.AssignVariableOp(resource=self.variable.handle, value=self.backup)
            elif not self.sparse_writes:
                # Duplicate ids carry identical backup rows, so the update is exact.
                written = tf.raw_ops.AssignVariableOp(
                    resource=self.variable.handle,
                    value=tf.tensor_scatter_nd_update(
                        self.variable.read_value(), self.touched.ids[:, None], self.backup
                    ),
                )
            else:
                # Duplicate ids carry identical backup rows, so the update is exact.
                written = self._keep_reads_aliasing(tf.raw_ops.ResourceScatterUpdate(
                    resource=self.variable.handle, indices=self.touched.ids, updates=self.backup
                ))
        return written

    def _keep_reads_aliasing(self, sparse_write):
        if not self.dense_reads:
            return sparse_write
        with tf.control_dependencies([sparse_write]):
            return switch_off_copy_on_read(self.variable)


class RowsInPlaceUnderXla:
    """Moves the touched rows of an embedding variable in place inside an
    XLA-compiled step, and back exactly, with no V x d tensor.

    XLA compiles the step into one program in which each write of the
    variable makes a new value. It makes a row write in the buffer of the
    value before only when every read of that value surely runs first, and
    copies the matrix otherwise. It knows no order but data: control
    dependencies do not reach it, and its CPU pipeline removes optimization
    barriers before it schedules. So every write here depends on what the
    pass before computed from its reads (`after`: its loss and gradients),
    through its row ids, computed from them and yet unchanged. Each pass
    sets its rows to `original + perturbation` in one write (rows put back
    in a write of their own would depend on nothing of the pass before), and
    the restore writes `original`: the rows come back bit for bit.

    There is no undo log: XLA commits a step's variable updates only when
    the whole step has run.

    Args:
        variable: The embedding `tf.Variable`.
        touched: The `TouchedRows` of the batch.
    """

    def __init__(self, variable, touched):
        self.variable = variable
        self.touched = touched
        if touched.is_dense:  # The perturbation is a V x d tensor anyway.
            self.original = variable.value()
        else:
            self.original = tf.gather(variable, touched.ids)

    def move(self, perturbation, after):
        """Sets the touched rows to `original + perturbation`, after the
        tensors `after`; returns the op that wrote them."""
        moved = self.original + tf.cast(perturbation, self.variable.dtype)
        if self.touched.is_dense:
            return self.variable.assign(moved, read_value=False)
        return tf.raw_ops.ResourceScatterUpdate(
            resource=self.variable.handle, indices=self._ids_after(after),
            updates=self._with_row_zero_agreeing(moved),
        )

    def restore(self, after):
        """Puts the original rows back, bit for bit, after the tensors
        `after`; returns the op that did."""
        if self.touched.is_dense:
            return self.variable.assign(self.original, read_value=False)
        # Duplicate ids carry identical original rows, so the update is exact.
        return tf.raw_ops.ResourceScatterUpdate(
            resource=self.variable.handle, indices=self._ids_after(after), updates=self.original
        )

    def _ids_after(self, after):
        # The touched ids, computed from one element of each tensor of
        # `after`: min(id, V - 1 + k) with k 1, or 0 where the sum is NaN, is
        # the id (all ids are below V), which XLA cannot know.
        firsts = [tf.cast(tf.reshape(t, [-1])[:1], tf.float32) for t in after]
        probe = tf.reduce_sum(tf.concat(firsts, axis=0))
        ids = self.touched.ids
        k = tf.cast(tf.equal(probe, probe), ids.dtype)
        last = tf.cast(tf.shape(self.variable)[0], ids.dtype) - 1
        return tf.minimum(ids, last + k)

    def _with_row_zero_agreeing(self, moved):
        # The empty segments sit at row 0, and share it with a real segment
        # when token 0 is in the batch (segment 0 then, the lowest id). An
        # update with duplicate indices is exact only if all write the same
        # row: the moved row 0 then, else the original one.
        empty = tf.range(self.touched.num_segments) > tf.reduce_max(self.touched.segments)
        row_zero = tf.where(self.touched.ids[0] == 0, moved[:1], self.original)
        return tf.where(empty[:, None], row_zero, moved)


def switch_off_copy_on_read(variable):
    """Returns the op that lets whole-matrix reads of `variable` alias it again.

    Safe at any time: in copy-on-read mode no read aliases the buffer, and the
    next sparse access copies it first if one does by then. Not under XLA.
    """
    return tf.raw_ops.DisableCopyOnRead(resource=variable.handle)


class UndoLog:
    """The rows of an embedding that a step has moved in place, and their originals.

    A compiled step runs as one call: when an op of a perturbed pass fails
    (a numerics check, an out-of-memory error), the ops after it never run,
    the in-graph restore among them, and the rows would stay moved. So the
    first move records the touched ids and their copy in variables held
    outside the model (it gains none) and raises a flag that the restore
    lowers again; `undo_on_failure` calls `undo()` from Python when the step
    raised, which writes the originals back only while the flag is up.

    Not for XLA-compiled steps, whose variables must keep their shapes: XLA
    writes a step's variable updates back only when the whole step has run,
    so a failing step leaves them untouched anyway.

    Args:
        variable: The embedding `tf.Variable`.
    """

    def __init__(self, variable):
        self.variable = variable
        dim = variable.shape[1]
        # Each of `ids` and `rows` is assigned once per step, and the flag
        # says whether they are current: Grappler merges the shapes of all
        # values assigned to one variable, so emptying them would make it
        # fold the batch's row count to zero.
        self.ids = tf.Variable(
            tf.zeros([0], tf.int64), trainable=False, shape=tf.TensorShape([None]),
            name="keras_adv_moved_ids",
        )
        self.rows = tf.Variable(
            tf.zeros([0, dim], variable.dtype.base_dtype), trainable=False,
            shape=tf.TensorShape([None, dim]), name="keras_adv_moved_rows",
        )
        self.moved = tf.Variable(False, trainable=False, name="keras_adv_rows_moved")

    @property
    def variables(self):
        return [self.ids, self.rows, self.moved]

    def record(self, ids, rows):
        """Returns the op that notes `rows` as the originals of the rows `ids`."""
        written = [
            self.ids.assign(tf.cast(ids, tf.int64), read_value=False),
            self.rows.assign(rows, read_value=False),
        ]
        with tf.control_dependencies(written):
            return self.moved.assign(True, read_value=False)

    def clear(self):
        """Returns the op that notes that no rows are moved."""
        return self.moved.assign(False, read_value=False)

    def undo(self):
        """Writes the originals back if rows are moved; returns whether it did.

        A tensor in a TF1 graph, to run in the session.
        """
        return tf.cond(self.moved, self._write_back, lambda: tf.constant(False))

    def _write_back(self):
        written = tf.raw_ops.ResourceScatterUpdate(
            resource=self.variable.handle, indices=self.ids.read_value(),
            updates=self.rows.read_value(),
        )
        with tf.control_dependencies([written]):
            # Nothing reads the matrix now; whole-matrix reads (Keras 3) that
            # follow, lookups after a failed `fit` among them, must not copy it.
            switched_off = switch_off_copy_on_read(self.variable)
            cleared = self.clear()
        with tf.control_dependencies([switched_off, cleared]):
            return tf.constant(True)
