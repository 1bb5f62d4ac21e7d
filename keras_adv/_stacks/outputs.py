"""What the model's outputs are: the distribution VAT's divergence compares,
read from the compiled loss (Keras 3 and tf-keras alike), and the term itself."""

import functools

from keras_adv.methods import DIVERGENCES, math_for

__all__ = ["divergence_kind", "divergence", "differ"]

# Loss name (a class's or a function's, in snake case) -> the distribution
# of the outputs it scores.
_CATEGORICAL = {"sparse_categorical_crossentropy", "categorical_crossentropy"}
_BERNOULLI = {"binary_crossentropy"}


def _snake(name):
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def divergence_kind(model, method):
    """The `DIVERGENCES` entry (or "callable") of `method` on `model`; a
    `ValueError` where the compiled loss does not say what the outputs are."""
    if callable(method.divergence):
        return "callable"
    if method.divergence in DIVERGENCES:
        return method.divergence
    loss = getattr(model, "loss", None)
    name = loss if isinstance(loss, str) else _snake(type(loss).__name__)
    if callable(loss) and not hasattr(loss, "get_config"):  # A plain loss function.
        name = getattr(loss, "__name__", "")
    from_logits = bool(loss.get_config().get("from_logits", False)) if hasattr(loss, "get_config") else False
    if name in _CATEGORICAL:
        return "categorical_logits" if from_logits else "categorical"
    if name in _BERNOULLI:
        return "bernoulli_logits" if from_logits else "bernoulli"
    raise ValueError(
        f"VAT compares the model's output distributions, but model '{model.name}' is "
        f"compiled with loss {loss!r}, which does not say what its outputs are. "
        f"State it: keras_adv.VAT(divergence='categorical_logits') (or one of "
        f"{DIVERGENCES}), or pass a callable (clean_outputs, perturbed_outputs) -> "
        f"per-example divergences."
    )


def divergence(model, method, clean, perturbed):
    """VAT's `D` on `model`: the mean over the (replica's) examples of the
    divergence of the perturbed outputs from the clean ones, float32 (one
    output, or a `divergence` callable, which receives them all)."""
    if not callable(method.divergence):
        flat_clean, flat_perturbed = flatten(clean), flatten(perturbed)
        if len(flat_perturbed) != 1:
            raise ValueError(
                f"VAT compares one output distribution; model '{model.name}' has "
                f"{len(flat_perturbed)} outputs. Pass keras_adv.VAT(divergence=...) a "
                f"callable (clean_outputs, perturbed_outputs) -> per-example divergences, "
                f"which receives them all."
            )
        clean, perturbed = flat_clean[0], flat_perturbed[0]
    per_example = method.per_example_divergence(clean, perturbed, divergence_kind(model, method))
    ops = math_for(per_example)
    return ops.mean(ops.cast(per_example, "float32"))


def differ(first, second):
    """Whether two passes' outputs differ anywhere: a boolean scalar."""
    flat = flatten(first)
    ops = math_for(flat[0])
    return functools.reduce(ops.logical_or, [ops.any(ops.not_equal(a, b)) for a, b in zip(flat, flatten(second))])


def flatten(structure):
    """The leaves of a model's output structure (a tensor, list, tuple or dict)."""
    if isinstance(structure, dict):
        return [leaf for key in sorted(structure) for leaf in flatten(structure[key])]
    if isinstance(structure, (list, tuple)):
        return [leaf for item in structure for leaf in flatten(item)]
    return [structure]
