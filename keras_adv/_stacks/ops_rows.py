"""What the methods perturb, in `keras.ops`: for Keras 3 on JAX and PyTorch.

The same two spaces as `tf_rows.py` (read its docstring for the math): the
touched rows of the matrix, duplicates summed, in one row per token
occurrence with static shapes; or each example's embedded sequence, one row
per example, padding masked. TensorFlow keeps its own module because tf-keras
(and its graph mode) cannot run `keras.ops`, and because its replicas must
exchange rows; here every array is global (JAX's `keras.distribution` shards
the batch and the compiler inserts the collectives), so nothing crosses
devices by hand.

Shapes are static Python ints: JAX traces the step with them, and PyTorch
runs eagerly.
"""

import math

from keras import ops

from keras_adv._stacks.lookup import padding_mask_input, pads_with_token_zero

__all__ = ["TouchedRows", "ExampleRows", "perturbation_space", "padding_masks", "random_start"]


def _flat_ids(ids_list):
    return ops.concatenate([ops.reshape(ops.cast(ids, "int32"), (-1,)) for ids in ids_list], axis=0)


def _flat_rows(tensors, dim):
    # The norm is taken in float32 even where the lookups are float16.
    return ops.concatenate([ops.reshape(ops.cast(t, "float32"), (-1, dim)) for t in tensors], axis=0)


def perturbation_space(per_example, ids_list, outputs_list, matrix, masks=None):
    """The `ExampleRows` (per example) or `TouchedRows` of the clean pass's lookups.

    Args:
        per_example: Which of the two.
        ids_list, outputs_list: The ids and outputs of each clean lookup.
        matrix: The embedding matrix's value in this step (JAX passes it
            through the step's state, not through the variable).
        masks: For `ExampleRows`, `padding_masks(...)`.
    """
    if per_example:
        return ExampleRows(ids_list, outputs_list, masks)
    return TouchedRows(ids_list, matrix)


class TouchedRows:
    """The rows of the matrix that the batch's lookups touch (`tf_rows.TouchedRows`).

    Args:
        ids_list: The ids of each lookup of the clean pass.
        matrix: The embedding matrix's value (for `unit()`).
    """

    per_example = False

    def __init__(self, ids_list, matrix):
        self.matrix = matrix
        self.dim = matrix.shape[1]
        ids = _flat_ids(ids_list)
        self.num_rows = ids.shape[0]
        self._sorted_ids = ops.sort(ids)
        self._first_of_token = ops.concatenate(
            [ops.ones((1,), "bool"), ops.not_equal(self._sorted_ids[1:], self._sorted_ids[:-1])],
            axis=0,
        )
        self._row_in_sorted_order = ops.cumsum(ops.cast(self._first_of_token, "int32")) - 1

    def unit(self):
        """The L2 norm of the touched rows of the matrix (each token once)."""
        rows = ops.cast(ops.take(self.matrix, self._sorted_ids, axis=0), "float32")
        squares = ops.where(self._first_of_token, ops.sum(ops.square(rows), axis=1), 0.0)
        return ops.stop_gradient(ops.sqrt(ops.sum(squares)))

    def entries(self):
        """How many entries `unit()` is the norm of: the touched rows' (each token once)."""
        return ops.sum(ops.cast(self._first_of_token, "float32")) * self.dim

    def _row_of(self, ids):
        position = ops.searchsorted(self._sorted_ids, ids, side="left")
        position = ops.minimum(position, self.num_rows - 1)
        touched = ops.equal(ops.take(self._sorted_ids, position), ids)
        return ops.take(self._row_in_sorted_order, position), touched

    def rows(self, ids_list, gradients):
        """The gradient of the touched rows, duplicates summed: float32 `[N, d]`."""
        rows, touched = self._row_of(_flat_ids(ids_list))
        values = ops.where(touched[:, None], _flat_rows(gradients, self.dim), 0.0)
        return ops.segment_sum(values, rows, num_segments=self.num_rows)

    def at(self, index, ids, rows):
        """Each id's row of `rows` (zeros for an untouched token), shaped
        `ids.shape + (d,)`: the perturbation of lookup `index`."""
        del index
        rows = ops.stop_gradient(rows)
        row, touched = self._row_of(ops.reshape(ops.cast(ids, "int32"), (-1,)))
        values = ops.where(touched[:, None], ops.take(rows, row, axis=0), 0.0)
        return ops.reshape(values, tuple(ids.shape) + (self.dim,))


class ExampleRows:
    """Each example's embedded sequence, one row per example (`tf_rows.ExampleRows`).

    Args:
        ids_list, outputs_list: The ids and outputs of each clean lookup.
        masks: For each lookup, its non-padding positions, or None.
    """

    per_example = True

    def __init__(self, ids_list, outputs_list, masks=None):
        masks = masks or [None] * len(ids_list)
        self.masks = [
            ops.ones(tuple(ids.shape), "float32") if mask is None else ops.cast(mask, "float32")
            for ids, mask in zip(ids_list, masks)
        ]
        self.shapes = [tuple(outputs.shape) for outputs in outputs_list]
        widths = [math.prod(shape[1:]) for shape in self.shapes]
        self.bounds = [sum(widths[:i]) for i in range(len(widths) + 1)]
        self._clean = outputs_list

    def _flat(self, tensors):
        parts = [
            ops.reshape(ops.cast(t, "float32") * mask[..., None], (shape[0], -1))
            for t, mask, shape in zip(tensors, self.masks, self.shapes)
        ]
        return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=1)

    def unit(self):
        """Each example's `||e_i||` over its non-padding positions, `[B, 1]`."""
        clean = self._flat(self._clean)
        return ops.stop_gradient(ops.sqrt(ops.sum(ops.square(clean), axis=1, keepdims=True)))

    def entries(self):
        """How many entries each example's `unit()` is the norm of: its
        non-padding positions times the width, `[B, 1]`."""
        counts = [ops.sum(ops.reshape(mask, (shape[0], -1)), axis=1, keepdims=True) * shape[-1]
                  for mask, shape in zip(self.masks, self.shapes)]
        return sum(counts[1:], counts[0])

    def rows(self, ids_list, gradients):
        """The gradient of each example's embedded sequence, `[B, M]`, float32."""
        del ids_list
        return self._flat(gradients)

    def at(self, index, ids, rows):
        """Lookup `index`'s part of each example's row, shaped as its output."""
        del ids
        rows = ops.stop_gradient(rows)[:, self.bounds[index]: self.bounds[index + 1]]
        return ops.reshape(rows, self.shapes[index]) * self.masks[index][..., None]


def padding_masks(layer, ids_list, inputs=None):
    """The non-padding positions of each lookup, or None where every position
    counts, by the rule of `lookup.pads_with_token_zero` and
    `lookup.padding_mask_input`."""
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


def random_start(method, noise, mask):
    """FreeLB's random start for one lookup (`tf_rows.random_start`), from
    `noise` uniform in [-1, 1] of the lookup output's shape (each backend
    draws it statelessly) and the lookup's non-padding `mask` (or None)."""
    shape = tuple(noise.shape)
    mask = ops.ones(shape[:-1]) if mask is None else ops.cast(mask, "float32")
    mask = ops.broadcast_to(mask[..., None], shape)
    rows = (shape[0], -1)
    return ops.reshape(method.initial(ops.reshape(noise, rows), ops.reshape(mask, rows)), shape)
