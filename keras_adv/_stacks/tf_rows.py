"""`rows.py` on TensorFlow's functions under `keras.ops` names (`TF_OPS`:
tf-keras cannot run `keras.ops`), and what `tf.distribute` replicas exchange
so that the touched rows are the global batch's.
"""

import types

import tensorflow as tf

from keras_adv._stacks import rows

__all__ = [
    "TF_OPS", "perturbation_space", "padding_masks", "replica_count",
    "add_gradients", "global_batch_draw", "sum_across_replicas",
]

TF_OPS = types.SimpleNamespace(
    cast=tf.cast, concatenate=lambda xs, axis=0: tf.concat(xs, axis), cumsum=tf.cumsum, equal=tf.equal,
    minimum=tf.minimum, not_equal=tf.not_equal, ones=tf.ones, prod=tf.reduce_prod, reshape=tf.reshape,
    searchsorted=tf.searchsorted, segment_sum=tf.math.unsorted_segment_sum, shape=tf.shape, sort=tf.sort,
    sqrt=tf.sqrt, square=tf.square, stop_gradient=tf.stop_gradient, sum=tf.reduce_sum,
    take=lambda x, indices, axis=0: tf.gather(x, indices, axis=axis), where=tf.where,
)


def _read_rows(layer):
    matrix = layer.embeddings
    if not isinstance(matrix, tf.Variable):
        matrix = matrix.value  # A Keras 3 variable wraps the tf.Variable.
    # A read of the whole matrix, then a gather, as a Keras 3 lookup does:
    # a sparse read would switch the variable to copy-on-read mode.
    return lambda ids: tf.gather(matrix.value(), ids)


def perturbation_space(per_example, lookups, layer, masks=None):
    """`rows.perturbation_space` of the clean pass's `lookups` of `layer`, the
    global batch's under a strategy."""
    replica = tf.distribute.get_replica_context()
    across = {}
    if not per_example and replica_count() > 1:
        across = dict(gather_ids=lambda ids: replica.all_gather(ids, axis=0),
                      sum_rows=lambda summed: sum_across_replicas([summed])[0])
    return rows.perturbation_space(TF_OPS, per_example, lookups, layer.embeddings.shape[1], _read_rows(layer),
                                   masks, **across)


def padding_masks(layer, ids_list, inputs=None):
    """`rows.padding_masks` in TensorFlow."""
    return rows.padding_masks(TF_OPS, layer, ids_list, inputs)


def global_batch_draw(draw, shape):
    """`draw(shape)`, noise of this replica's share of the batch: its rows of
    the global batch's noise (of the same stateless seed), as on one device
    (where the batch splits evenly)."""
    replica, replicas = tf.distribute.get_replica_context(), replica_count()
    if replicas == 1:
        return draw(shape)
    noise = draw(tf.concat([[shape[0] * replicas], shape[1:]], 0))
    start = shape[0] * tf.cast(replica.replica_id_in_sync_group, shape.dtype)
    return noise[start:start + shape[0]]


def replica_count():
    """How many replicas share the batch here (1 outside a strategy)."""
    replica = tf.distribute.get_replica_context()
    return 1 if replica is None else replica.num_replicas_in_sync


def sum_across_replicas(values):
    """Each of `values` summed over the replicas: a merge call, as `all_reduce`'s
    gradient (never needed) fails in a TF1 graph to find other replicas' variables."""
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
