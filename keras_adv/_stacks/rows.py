"""What the methods perturb: the embedding rows that a batch touches, or
each example's embedded sequence (docs/design.md, "What is perturbed").

Written once in `keras.ops` names (`tf_rows.py` binds TensorFlow's to them).
Each space hands the method a 2-D gradient (`rows`), gives each lookup its
part of the perturbation back (`at`), and says what a relative size is a
fraction of (`unit`).
"""

import math

from keras_adv._stacks.lookup import padding_mask_input, pads_with_token_zero

__all__ = ["TouchedRows", "ExampleRows", "perturbation_space", "padding_masks", "KERAS_OPS"]


class _KerasOps:
    """`keras.ops`, imported when first used (tf-keras users need not load
    Keras 3), with static shapes (JAX traces with them)."""

    def __getattr__(self, name):
        from keras import ops

        return getattr(ops, name)

    @staticmethod
    def shape(x):
        return tuple(x.shape)

    prod = staticmethod(math.prod)


KERAS_OPS = _KerasOps()


def _flat_ids(ops, ids_list):
    # bert4keras feeds token ids as floats; they are whole numbers.
    return ops.concatenate([ops.reshape(ops.cast(ids, "int32"), (-1,)) for ids in ids_list], axis=0)


def _flat_rows(ops, tensors, dim):
    # The norm is taken in float32 even where the lookups are float16: a
    # loss-scaled float16 gradient would overflow in its square.
    return ops.concatenate([ops.reshape(ops.cast(t, "float32"), (-1, dim)) for t in tensors], axis=0)


class TouchedRows:
    """The rows of the matrix that the clean pass's lookups touch; a later
    pass's lookups find their tokens' rows by id.

    Args:
        ops: `keras.ops`, or TensorFlow's functions under its names (`tf_rows.py`).
        ids_list: The ids of each lookup of the clean pass.
        dim: The embedding's width.
        read_rows: `ids -> the matrix's rows of ids`, in this step.
        gather_ids, sum_rows: Across replicas: every replica's ids, and the
            replicas' rows summed; None on one replica (or global arrays).
    """

    per_example = False

    def __init__(self, ops, ids_list, dim, read_rows, gather_ids=None, sum_rows=None):
        self.ops, self.dim, self._read_rows, self._sum_rows = ops, dim, read_rows, sum_rows
        ids = _flat_ids(ops, ids_list)
        if gather_ids is not None:
            ids = gather_ids(ids)
        # One row per token occurrence of the (global) batch: each distinct
        # token's in the first, empty ones after (static shapes).
        self.num_rows = ops.shape(ids)[0]
        self._sorted_ids = ops.sort(ids)
        self._first_of_token = ops.concatenate(
            [ops.ones((1,), "bool"), ops.not_equal(self._sorted_ids[1:], self._sorted_ids[:-1])], axis=0,
        )
        # The row of each sorted occurrence: tokens numbered in id order.
        self._row_in_sorted_order = ops.cumsum(ops.cast(self._first_of_token, "int32")) - 1

    def unit(self):
        """The L2 norm of the touched rows of the matrix (each token once)."""
        ops = self.ops
        rows = ops.cast(self._read_rows(self._sorted_ids), "float32")
        squares = ops.where(self._first_of_token, ops.sum(ops.square(rows), axis=1), 0.0)
        return ops.stop_gradient(ops.sqrt(ops.sum(squares)))

    def entries(self):
        """How many entries `unit()` is the norm of: the touched rows' (each token once)."""
        return self.ops.sum(self.ops.cast(self._first_of_token, "float32")) * self.dim

    def _row_of(self, ids):
        """The row of each id in `ids` (flat), and whether it is a touched token."""
        ops = self.ops
        position = ops.minimum(ops.searchsorted(self._sorted_ids, ids, side="left"), self.num_rows - 1)
        # ops.equal, not ==: a TF1 graph compares tensors by identity.
        touched = ops.equal(ops.take(self._sorted_ids, position, axis=0), ids)
        return ops.take(self._row_in_sorted_order, position, axis=0), touched

    def rows(self, ids_list, gradients):
        """The gradient of the touched rows, duplicates summed: float32 `[N, d]`
        (`N` the global batch's token occurrences), the same on every replica."""
        ops = self.ops
        rows, touched = self._row_of(_flat_ids(ops, ids_list))
        # A token that the clean pass did not look up (a model that replaces
        # tokens at random) has no row: its gradient adds to none.
        values = ops.where(touched[:, None], _flat_rows(ops, gradients, self.dim), 0.0)
        summed = ops.segment_sum(values, rows, num_segments=self.num_rows)
        return summed if self._sum_rows is None else self._sum_rows(summed)

    def at(self, index, ids, rows):
        """Each id's row of `rows` (zeros for an untouched token), shaped
        `ids.shape + (d,)`, a constant of the pass that adds it (the update
        differentiates the loss at `E + r`, not how `r` came about)."""
        del index  # Every lookup finds its rows by id.
        ops = self.ops
        row, touched = self._row_of(ops.reshape(ops.cast(ids, "int32"), (-1,)))
        row, touched = ops.reshape(row, ops.shape(ids)), ops.reshape(touched, ops.shape(ids))
        return ops.where(touched[..., None], ops.take(ops.stop_gradient(rows), row, axis=0), 0.0)


class ExampleRows:
    """Each example's embedded sequence, one row per example (`per_example=True`).

    Args:
        ops: As `TouchedRows`'s.
        ids_list, outputs_list: The ids and outputs of each clean lookup.
        masks: For each lookup, its non-padding positions (bool, the shape of
            its ids), or None where every position counts (`padding_masks`).
    """

    per_example = True

    def __init__(self, ops, ids_list, outputs_list, masks=None):
        self.ops = ops
        masks = masks or [None] * len(ids_list)
        self.masks = [
            ops.ones(ops.shape(ids), "float32") if mask is None else ops.cast(mask, "float32")
            for ids, mask in zip(ids_list, masks)
        ]
        self.shapes = [ops.shape(outputs) for outputs in outputs_list]
        # Where each lookup's part of a row starts (static where the shapes are).
        self.bounds = [0]
        for shape in self.shapes:
            self.bounds.append(self.bounds[-1] + ops.prod(shape[1:]))
        self._clean = outputs_list

    def _flat(self, tensors):
        """`[B, sum of each lookup's T x d]`: the masked tensors, example by example."""
        ops = self.ops
        parts = [
            ops.reshape(ops.cast(t, "float32") * mask[..., None], (shape[0], -1))
            for t, mask, shape in zip(tensors, self.masks, self.shapes)
        ]
        return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=1)

    def unit(self):
        """Each example's `||e_i||` over its non-padding positions, `[B, 1]`."""
        ops = self.ops
        return ops.stop_gradient(ops.sqrt(ops.sum(ops.square(self._flat(self._clean)), axis=1, keepdims=True)))

    def entries(self):
        """How many entries each example's `unit()` is the norm of: its
        non-padding positions times the width, `[B, 1]`."""
        ops = self.ops
        counts = [ops.sum(ops.reshape(mask, (shape[0], -1)), axis=1, keepdims=True) * ops.cast(shape[-1], "float32")
                  for mask, shape in zip(self.masks, self.shapes)]
        return sum(counts[1:], counts[0])

    def rows(self, ids_list, gradients):
        """The gradient of each example's embedded sequence, `[B, M]`, float32."""
        del ids_list
        return self._flat(gradients)

    def at(self, index, ids, rows):
        """Lookup `index`'s part of each example's row, shaped as its output."""
        del ids
        ops = self.ops
        rows = ops.stop_gradient(rows)[:, self.bounds[index]: self.bounds[index + 1]]
        return ops.reshape(rows, self.shapes[index]) * self.masks[index][..., None]


def perturbation_space(ops, per_example, lookups, dim, read_rows, masks=None, **across):
    """The `ExampleRows` (per example, with `masks`) or `TouchedRows` (with
    `read_rows` and `across`) of the clean pass's `lookups`."""
    if per_example:
        return ExampleRows(ops, lookups.ids, lookups.outputs, masks)
    return TouchedRows(ops, lookups.ids, dim, read_rows, **across)


def padding_masks(ops, layer, ids_list, inputs=None):
    """The non-padding positions of each lookup's ids (of `layer`, in a batch
    of `inputs`), or None where every position counts: by the rule of
    `lookup.pads_with_token_zero` and `lookup.padding_mask_input`."""
    zero_pads = pads_with_token_zero(layer)
    padding_mask = padding_mask_input(inputs)
    masks = []
    for ids in ids_list:
        if zero_pads:
            masks.append(ops.not_equal(ops.cast(ids, "int32"), 0))
        elif padding_mask is not None and len(padding_mask.shape) == len(ids.shape):
            masks.append(ops.cast(padding_mask, "bool"))
        else:
            masks.append(None)
    return masks
