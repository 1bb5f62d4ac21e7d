"""What is timed: the variants of a training step, and each method's floor.

A variant is one named step on the same model: the plain step; a pass
computing only the embedding gradient (with the plain step, the two measured
passes that each method's floor comes from, DESIGN.md's cost model); the
gradient penalty's step written by hand in the backend's own autodiff (its
floor: a double backward is not a sum of the other two passes);
keras_adv's methods (`METHODS`); and the published Keras recipe, as published
(with host copies) and densely in the graph. This module says which variants
there are and which model runs which; how a variant's step is made is the
backend's (`step_functions` in `backends/<name>.py`).
"""

from benchmarks.step_cost import models
from benchmarks.step_cost.models import MODELS

EPSILON = 1.0
RECIPE_HOST, RECIPE_GRAPH = "published recipe (host copies)", "published recipe (dense, in graph)"
# keras_adv's methods, each named "<method> <objective>": keras_adv's method,
# the objective, and whether the perturbation is per example.
METHODS = {
    "fgm sum": ("fgm", "sum", False),
    "fgm adversarial": ("fgm", "adversarial", False),
    "pgd3 sum": ("pgd", "sum", False),
    "pgd3 adversarial": ("pgd", "adversarial", False),
    "fgm sum per-example": ("fgm", "sum", True),
    "fgm adversarial per-example": ("fgm", "adversarial", True),
    "fgsm sum": ("fgsm", "sum", False),
    "freelb3 sum": ("freelb", "sum", True),
    "gradient-penalty sum": ("gradient_penalty", "sum", False),
    "vat sum": ("vat", "sum", True),
    "awp sum": ("awp", "sum", False),
    "awp adversarial": ("awp", "adversarial", False),
}
DOUBLE_BACKWARD = "double backward (penalty by hand)"
VARIANTS = ["plain", "embedding gradient", DOUBLE_BACKWARD, *METHODS, RECIPE_HOST, RECIPE_GRAPH]
# What the large-vocabulary model runs: the cost that must not grow with V.
LARGE_VOCABULARY_VARIANTS = ["plain", "embedding gradient", "fgm sum", RECIPE_HOST]
FROZEN_EMBEDDING_VARIANTS = ["plain", "fgm sum"]
# What runs under MirroredStrategy, beside the same on one device.
MIRRORED_VARIANTS = ["plain", "fgm sum", "fgm adversarial", "pgd3 sum"]


def variants_of(model_name):
    """The variants that model `model_name` of `MODELS` runs."""
    if MODELS[model_name].get("frozen_embedding"):
        return FROZEN_EMBEDDING_VARIANTS
    return LARGE_VOCABULARY_VARIANTS if "250000" in model_name else VARIANTS


def settings(name):
    """keras_adv's settings of the method variant `name` (a key of `METHODS`),
    for the backend's adversarial train step."""
    import keras_adv
    from keras_adv._stacks.passes import Settings

    method, objective, per_example = METHODS[name]
    if method == "gradient_penalty":
        return Settings(keras_adv.GradientPenalty(), objective, per_example=per_example)
    if method == "vat":  # One power iteration.
        return Settings(keras_adv.VAT(), objective, per_example=per_example)
    if method == "awp":  # Every weight matrix, boxed at 1% of each entry.
        return Settings(keras_adv.AWP(), objective)
    steps = dict(steps=3, alpha=0.4) if method in ("pgd", "freelb") else {}
    epsilon = 0.01 if method == "fgsm" else EPSILON  # Per entry, not per batch.
    method = keras_adv.methods.get_method(method, epsilon=epsilon, **steps)
    return Settings(method, objective, per_example=per_example)


def adversarial_step(model, layer, name):
    """The train step that `adversarial_training` gives `model` for variant
    `name`, bound to the model; the previous variant's keeps working."""
    from keras_adv import _stacks

    if METHODS[name][0] == "awp":  # It perturbs weights, not the embedding.
        layer = None
    _stacks.stack_for(model).install(model, layer, settings(name))
    return model.train_step


def ready(backend, stack, model_name, jit):
    """Model `model_name` of `MODELS` built on `stack`, and each of its
    variants' step, traced and warmed up.

    Returns:
        `(model, embedding_name, data, {variant: call})`, each `call()` one
        step of that variant (`step_functions` in `backends/<name>.py`).
    """
    model, embedding_name, data = models.build(stack, MODELS[model_name], jit)
    functions = backend.step_functions(stack, model, embedding_name, data, variants_of(model_name))
    return model, embedding_name, data, warmed_up(functions)


def warmed_up(functions):
    """`functions`, `{variant: call}`, each called twice: traced and warmed up."""
    for function in functions.values():
        function()
        function()
    return functions


def floors(times):
    """Each method's floor, in plain steps, from the two measured passes."""
    plain, embgrad = times["plain"], times["embedding gradient"]
    return {
        "fgm sum": 2.0,
        "fgm adversarial": (embgrad + plain) / plain,
        "pgd3 sum": (plain + 2 * embgrad + plain) / plain,
        "pgd3 adversarial": (3 * embgrad + plain) / plain,
        "fgm sum per-example": 2.0,
        "fgm adversarial per-example": (embgrad + plain) / plain,
        "fgsm sum": 2.0,
        # K passes, each a full forward and backward.
        "freelb3 sum": 3.0,
        # Its step written by hand: the loss plus half the squared norm of
        # its gradient at the lookups, differentiated again, and the update.
        "gradient-penalty sum": times[DOUBLE_BACKWARD] / plain,
        # The clean pass, one power iteration (the lookups' gradient of the
        # divergence) and the divergence pass with its weight gradients.
        "vat sum": (plain + embgrad + plain) / plain,
        # Two full passes: the clean one gives the weight matrices' gradients
        # (nearly all of a backward pass) whatever the objective.
        "awp sum": 2.0,
        "awp adversarial": 2.0,
    }
