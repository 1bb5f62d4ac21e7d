"""What the methods perturb, in TensorFlow: the embedding rows that a batch
touches (on one replica or many), or each example's embedded sequence.

Both spaces hand the method a 2-D gradient (`rows`) and give each lookup its
part of the method's perturbation back (`at`), shaped like the lookup's
output; `unit()` is the size that a relative epsilon is a fraction of.

Touched rows (`TouchedRows`, the default):

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

from keras_adv._stacks.lookup import padding_mask_input, pads_with_token_zero

__all__ = [
    "TouchedRows", "ExampleRows", "perturbation_space", "padding_masks", "random_start",
    "add_gradients", "global_batch_draw", "sum_across_replicas",
]


def _flat_ids(ids_list):
    # bert4keras feeds token ids as floats; they are whole numbers.
    return tf.concat([tf.reshape(tf.cast(ids, tf.int32), [-1]) for ids in ids_list], axis=0)


def _flat_rows(tensors, dim):
    # The norm is taken in float32 even where the lookups are float16: a
    # loss-scaled float16 gradient would overflow in its square.
    return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1, dim]) for t in tensors], axis=0)


def perturbation_space(per_example, lookups, layer, masks=None):
    """The `ExampleRows` (per example) or `TouchedRows` of the clean pass's `lookups`."""
    if per_example:
        return ExampleRows(lookups, layer, masks)
    return TouchedRows(lookups, layer)


def _matrix_rows(matrix, ids):
    if not isinstance(matrix, tf.Variable):
        matrix = matrix.value  # A Keras 3 variable wraps the tf.Variable.
    # A read of the whole matrix, then a gather, as a Keras 3 lookup does:
    # a sparse read would switch the variable to copy-on-read mode.
    return tf.cast(tf.gather(matrix.value(), ids), tf.float32)


class TouchedRows:
    """The rows of the matrix that the batch's lookups touch.

    Built once per step from the ids of the clean pass; every later pass
    looks up the same tokens, and each lookup finds its token's row by id.

    Args:
        lookups: The `Lookups` of the clean pass.
        layer: The embedding layer.
    """

    per_example = False

    def __init__(self, lookups, layer):
        self.layer = layer
        self.dim = layer.embeddings.shape[1]
        self.replica = tf.distribute.get_replica_context()
        distributed = self.replica is not None and self.replica.num_replicas_in_sync > 1
        if not distributed:
            self.replica = None
        ids = _flat_ids(lookups.ids)
        if self.replica is not None:
            ids = self.replica.all_gather(ids, axis=0)
        # One row per token occurrence of the (global) batch: each distinct
        # token's in the first, empty ones after (static shapes).
        self.num_rows = tf.shape(ids)[0]
        self._sorted_ids = tf.sort(ids)
        self._first_of_token = tf.concat(
            [tf.ones([1], tf.bool), tf.not_equal(self._sorted_ids[1:], self._sorted_ids[:-1])],
            axis=0,
        )
        # The row of each sorted occurrence: tokens numbered in id order.
        self._row_in_sorted_order = tf.cumsum(tf.cast(self._first_of_token, tf.int32)) - 1

    def unit(self):
        """The L2 norm of the touched rows of the matrix (each token once), a
        constant of the step: the unit of a relative epsilon."""
        rows = _matrix_rows(self.layer.embeddings, self._sorted_ids)
        squares = tf.where(self._first_of_token, tf.reduce_sum(tf.square(rows), axis=1), 0.0)
        return tf.stop_gradient(tf.sqrt(tf.reduce_sum(squares)))

    def entries(self):
        """How many entries `unit()` is the norm of: the touched rows' (each token once)."""
        return tf.reduce_sum(tf.cast(self._first_of_token, tf.float32)) * self.dim

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
        rows, touched = self._row_of(_flat_ids(ids_list))
        # A token that the clean pass did not look up (a model that replaces
        # tokens at random) has no row: its gradient adds to none.
        values = tf.where(touched[:, None], _flat_rows(gradients, self.dim), 0.0)
        summed = tf.math.unsorted_segment_sum(values, rows, self.num_rows)
        if self.replica is not None:
            [summed] = sum_across_replicas([summed])
        return summed

    def at(self, index, ids, rows):
        """Each id's row of `rows` (zeros for an untouched token), shaped
        `ids.shape + [d]`: the perturbation of lookup `index`.

        The rows are a constant of the pass that adds them: the update
        differentiates the loss at `E + r`, not how `r` came from the
        weights (a TF1 graph's `tf.gradients` would follow it otherwise).
        """
        del index  # Every lookup finds its rows by id.
        rows = tf.stop_gradient(rows)
        flat = tf.reshape(tf.cast(ids, tf.int32), [-1])
        row, touched = self._row_of(flat)
        values = tf.where(touched[:, None], tf.gather(rows, row), tf.zeros_like(rows[:1]))
        return tf.reshape(values, tf.concat([tf.shape(ids), [self.dim]], axis=0))


class ExampleRows:
    """Each example's embedded sequence, one row per example (`per_example=True`).

    Example i's row holds its lookups' outputs at its non-padding positions,
    flattened and concatenated: the methods then take one norm (or ball) per
    example, and padding gets no perturbation and counts in no norm. Every
    later pass makes the same lookups in the same order, so lookup `index`
    gets the same part of each row. Nothing crosses replicas: each example's
    norm is its own.

    Args:
        lookups: The `Lookups` of the clean pass.
        layer: The embedding layer.
        masks: For each lookup, its non-padding positions (bool, the shape of
            its ids), or None where every position counts
            (`padding_masks`).
    """

    per_example = True

    def __init__(self, lookups, layer, masks=None):
        self.dim = layer.embeddings.shape[1]
        masks = masks or [None] * len(lookups.ids)
        self.masks = [
            tf.ones(tf.shape(ids), tf.float32) if mask is None else tf.cast(mask, tf.float32)
            for ids, mask in zip(lookups.ids, masks)
        ]
        self.shapes = [tf.shape(outputs) for outputs in lookups.outputs]
        self.widths = [tf.reduce_prod(shape[1:]) for shape in self.shapes]
        self._clean = lookups.outputs

    def _flat(self, tensors):
        """`[B, sum of each lookup's T x d]`: the masked tensors, example by example."""
        parts = [
            tf.reshape(tf.cast(t, tf.float32) * mask[..., None], [shape[0], width])
            for t, mask, shape, width in zip(tensors, self.masks, self.shapes, self.widths)
        ]
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)

    def unit(self):
        """Each example's `||e_i||` over its non-padding positions, `[B, 1]`:
        the unit of a relative epsilon, a constant of the step."""
        clean = self._flat(self._clean)
        return tf.stop_gradient(tf.sqrt(tf.reduce_sum(tf.square(clean), axis=1, keepdims=True)))

    def entries(self):
        """How many entries each example's `unit()` is the norm of: its
        non-padding positions times the width, `[B, 1]`."""
        counts = [tf.reduce_sum(tf.reshape(mask, [shape[0], -1]), axis=1, keepdims=True)
                  * tf.cast(shape[-1], tf.float32) for mask, shape in zip(self.masks, self.shapes)]
        return tf.add_n(counts)

    def rows(self, ids_list, gradients):
        """The gradient of each example's embedded sequence, `[B, M]`, float32."""
        del ids_list
        return self._flat(gradients)

    def at(self, index, ids, rows):
        """Lookup `index`'s part of each example's row, shaped as its output."""
        del ids
        rows = tf.stop_gradient(rows)
        if len(self.widths) > 1:
            rows = tf.split(rows, tf.stack(self.widths), axis=1)[index]
        return tf.reshape(rows, self.shapes[index]) * self.masks[index][..., None]


def padding_masks(layer, ids_list, inputs=None):
    """The non-padding positions of each lookup, or None where every position
    counts, by the rule of `lookup.pads_with_token_zero` and
    `lookup.padding_mask_input`.

    Args:
        layer: The embedding layer.
        ids_list: The ids of each lookup.
        inputs: The model's inputs of the batch (a dict for KerasHub models).
    """
    zero_pads = pads_with_token_zero(layer)
    padding_mask = padding_mask_input(inputs)
    masks = []
    for ids in ids_list:
        if zero_pads:
            masks.append(tf.not_equal(tf.cast(ids, tf.int32), 0))
        elif padding_mask is not None and padding_mask.shape.rank == ids.shape.rank:
            masks.append(tf.cast(padding_mask, tf.bool))
        else:
            masks.append(None)
    return masks


def random_start(method, ids, mask, dim, seed):
    """FreeLB's random start for one lookup, shaped `ids.shape + [dim]`
    (`method.initial` of uniform noise; zero at padding).

    Args:
        method: The `FreeLB`.
        ids: The lookup's ids.
        mask: Its non-padding positions, or None.
        dim: The embedding's width.
        seed: A `[2]` int64 tensor: the noise is a function of it alone
            (stateless), so the model gains no random state.
    """
    shape = tf.concat([tf.shape(ids), [dim]], axis=0)
    noise = global_batch_draw(lambda s: tf.random.stateless_uniform(s, seed, minval=-1.0, maxval=1.0), shape)
    mask = tf.ones(tf.shape(ids)) if mask is None else tf.cast(mask, tf.float32)
    mask = tf.broadcast_to(mask[..., None], shape)
    rows = [tf.shape(ids)[0], -1]
    return tf.reshape(method.initial(tf.reshape(noise, rows), tf.reshape(mask, rows)), shape)


def global_batch_draw(draw, shape):
    """`draw(shape)`, random noise of this replica's share of the batch.

    Under a strategy, each replica draws the global batch's noise (of the
    same stateless seed) and takes its own rows of it, so that training
    matches one device (where the batch splits evenly: a replica's share
    starts at its index times its own batch size).
    """
    replica = tf.distribute.get_replica_context()
    replicas = 1 if replica is None else replica.num_replicas_in_sync
    if replicas == 1:
        return draw(shape)
    noise = draw(tf.concat([[shape[0] * replicas], shape[1:]], 0))
    start = shape[0] * tf.cast(replica.replica_id_in_sync_group, shape.dtype)
    return noise[start:start + shape[0]]


def sum_across_replicas(values):
    """Each of `values` summed over the replicas, in replica context.

    A merge call rather than `ReplicaContext.all_reduce`, which also defines
    its gradient: nothing differentiates through these sums (the
    perturbation is a constant of the pass that adds it), and in a TF1 graph
    (tf-keras with eager execution disabled) that gradient's definition
    fails to find the other replicas' variables.
    """
    def reduce(strategy, *per_replica):
        return [strategy.extended.reduce_to(tf.distribute.ReduceOp.SUM, v, destinations=v)
                for v in per_replica]

    return list(tf.distribute.get_replica_context().merge_call(reduce, args=tuple(values)))


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
