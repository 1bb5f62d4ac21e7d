"""Where the perturbation enters: the outputs of the embedding layer's lookups
(docs/design.md, "Where the perturbation enters"). Adding `r[ids]` there
equals looking up `E + r`, bit for bit, so no pass writes the matrix.

While a pass runs, the layer instance's `call` is wrapped (an instance
attribute, removed when the last pass using it ends). A call is a lookup
when it maps ids to the matrix's vectors (`is_lookup`): the reverse call of
a tied embedding passes through untouched.
"""

import contextlib
import threading

__all__ = ["Lookups", "tapped_lookups", "is_lookup", "pads_with_token_zero", "padding_mask_input"]

# The wrapper of each tapped layer, and how many passes use it. A pass belongs
# to one thread: MirroredStrategy runs the replicas' steps in threads that overlap.
_lock = threading.Lock()
_wrappers = {}  # id(layer) -> [the layer's own instance `call` or None, users]
_local = threading.local()


class Lookups:
    """The token ids of each lookup of a pass, in call order, and the outputs
    it returned to the model (perturbed, where the pass perturbs)."""

    def __init__(self, ids=(), outputs=()):
        self.ids = list(ids)
        self.outputs = list(outputs)


@contextlib.contextmanager
def tapped_lookups(layer, transform):
    """Inside the block, this thread's `index`-th lookup of `layer` returns
    `transform(index, ids, outputs)`. Yields the block's `Lookups`, filled as
    the model runs (empty where `layer` is None)."""
    lookups = Lookups()
    if layer is None:
        yield lookups
        return
    taps = _taps_of_this_thread()
    if id(layer) in taps:
        raise RuntimeError(f"The lookups of layer '{layer.name}' are tapped already.")
    _wrap(layer)
    taps[id(layer)] = (transform, lookups)
    try:
        yield lookups
    finally:
        del taps[id(layer)]
        _unwrap(layer)


def _taps_of_this_thread():
    if not hasattr(_local, "taps"):
        _local.taps = {}
    return _local.taps


def _wrap(layer):
    with _lock:
        entry = _wrappers.get(id(layer))
        if entry is None:
            original = layer.call

            def call(*args, **kwargs):
                outputs = original(*args, **kwargs)
                tap = _taps_of_this_thread().get(id(layer))
                ids = args[0] if args else kwargs.get("inputs")
                if tap is None or not is_lookup(layer, ids, outputs):
                    return outputs
                transform, lookups = tap
                outputs = transform(len(lookups.ids), ids, outputs)
                lookups.ids.append(ids)
                lookups.outputs.append(outputs)
                return outputs

            # A layer revived from a SavedModel has a `call` of its own.
            own = layer.__dict__.get("call")
            layer.call = call
            entry = _wrappers[id(layer)] = [own, 0]
        entry[1] += 1


def _unwrap(layer):
    with _lock:
        entry = _wrappers[id(layer)]
        entry[1] -= 1
        if entry[1] == 0:
            del _wrappers[id(layer)]
            if entry[0] is None:
                del layer.call
            else:
                layer.call = entry[0]


def is_lookup(layer, ids, outputs):
    """Whether a call of embedding `layer` mapped `ids` to its vectors: one
    axis more than the ids, of the matrix's width. (A tied embedding's
    reverse call maps vectors to vocabulary logits; bert4keras's even
    flattens them first, so the rank alone does not tell.)"""
    try:
        return (
            len(outputs.shape) == len(ids.shape) + 1
            and outputs.shape[-1] == layer.embeddings.shape[1]
        )
    except (AttributeError, TypeError, ValueError):  # No shape, or an unknown rank.
        return False


def pads_with_token_zero(layer):
    """Whether token 0 is padding for `layer`'s lookups (per-example masks):
    a layer that masks it (`mask_zero=True`), and bert4keras's embeddings
    (its models pad with token 0)."""
    return bool(getattr(layer, "mask_zero", False)) or any(
        cls.__module__.startswith("bert4keras.") for cls in type(layer).__mro__
    )


def padding_mask_input(inputs):
    """A KerasHub model's `padding_mask` input of the batch, or None.

    Used for a lookup whose ids have its shape, where token 0 is not padding
    (`pads_with_token_zero`); elsewhere every position counts.
    """
    return inputs.get("padding_mask") if isinstance(inputs, dict) else None
