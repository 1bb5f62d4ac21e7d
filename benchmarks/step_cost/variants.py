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
# the objective, whether the perturbation is per example, and (a fourth
# entry) whether its sizes are relative.
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
    "rdrop sum": ("rdrop", "sum", False),
    "neftune sum": ("neftune", "sum", True),
    # Relative sizes (the defaults) read the norm of what is perturbed, which
    # the step has already: no pass more.
    "fgm sum relative": ("fgm", "sum", False, True),
    "fgm sum per-example relative": ("fgm", "sum", True, True),
    "vat sum relative": ("vat", "sum", True, True),
}
DOUBLE_BACKWARD = "double backward (penalty by hand)"
VARIANTS = ["plain", "embedding gradient", DOUBLE_BACKWARD, *(m for m in METHODS if m != "rdrop sum"),
            RECIPE_HOST, RECIPE_GRAPH]
# R-Drop needs dropout (models.BERT_WITH_DROPOUT), which the other models lack.
DROPOUT_VARIANTS = ["plain", "rdrop sum"]
# What the large-vocabulary model runs: the cost that must not grow with V.
LARGE_VOCABULARY_VARIANTS = ["plain", "embedding gradient", "fgm sum", RECIPE_HOST]
FROZEN_EMBEDDING_VARIANTS = ["plain", "fgm sum"]
# A large model fine-tuned with LoRA: FGM both ways, NEFTune (instruction
# tuning's noise), and the published recipe, which writes the whole V x d
# matrix (frozen or not) twice a step.
CAUSAL_LM_VARIANTS = ["plain", "fgm sum", "fgm sum per-example", "neftune sum", RECIPE_HOST]
# What runs under MirroredStrategy, beside the same on one device.
MIRRORED_VARIANTS = ["plain", "fgm sum", "fgm adversarial", "pgd3 sum"]


def variants_of(model_name):
    """The variants that model `model_name` of `MODELS` runs."""
    if MODELS[model_name].get("causal_lm"):
        return CAUSAL_LM_VARIANTS
    if MODELS[model_name].get("frozen_embedding"):
        return FROZEN_EMBEDDING_VARIANTS
    if MODELS[model_name].get("dropout"):
        return DROPOUT_VARIANTS
    return LARGE_VOCABULARY_VARIANTS if "250000" in model_name else VARIANTS


def settings(name):
    """keras_adv's settings of the method variant `name` (a key of `METHODS`),
    for the backend's adversarial train step."""
    import keras_adv
    from keras_adv._stacks.passes import Settings

    method, objective, per_example, *relative = METHODS[name]
    relative = bool(relative and relative[0])
    if relative:  # The relative defaults, as `adversarial_training` takes them.
        method = keras_adv.methods.get_method(method, relative=True, per_example=per_example)
    elif method == "gradient_penalty":
        method = keras_adv.GradientPenalty()
    elif method in ("vat", "rdrop", "neftune"):  # VAT: one power iteration.
        method = keras_adv.methods.get_method(method)
    elif method == "awp":  # Every weight matrix, boxed at 1% of each entry.
        method = keras_adv.AWP()
    else:
        steps = dict(steps=3, alpha=0.4) if method in ("pgd", "freelb") else {}
        epsilon = 0.01 if method == "fgsm" else EPSILON  # Per entry, not per batch.
        method = keras_adv.methods.get_method(method, epsilon=epsilon, **steps)
    return Settings(method, objective, relative_epsilon=relative, per_example=per_example)


def adversarial_step(model, layer, name):
    """The train step that `adversarial_training` gives `model` for variant
    `name`, bound to the model; the previous variant's keeps working."""
    from keras_adv import _stacks

    if not settings(name).method.embedding:  # AWP, R-Drop: no embedding perturbed.
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
    """Each method's floor, in plain steps, from the measured passes: the
    fixed ones always, the others where the passes they count were timed."""
    plain = times["plain"]
    floor = {
        "fgm sum": 2.0,
        "fgm sum per-example": 2.0,
        "fgsm sum": 2.0,
        # K passes, each a full forward and backward.
        "freelb3 sum": 3.0,
        # Two full passes: the clean one gives the weight matrices' gradients
        # (nearly all of a backward pass) whatever the objective.
        "awp sum": 2.0,
        "awp adversarial": 2.0,
        # Two full passes (their own dropout masks), whose losses and
        # divergence are differentiated at once.
        "rdrop sum": 2.0,
        # One full pass, its noise added at the lookups.
        "neftune sum": 1.0,
        "fgm sum relative": 2.0,
        "fgm sum per-example relative": 2.0,
    }
    if DOUBLE_BACKWARD in times:
        # Its step written by hand: the loss plus half the squared norm of
        # its gradient at the lookups, differentiated again, and the update.
        floor["gradient-penalty sum"] = times[DOUBLE_BACKWARD] / plain
    if "embedding gradient" in times:
        embgrad = times["embedding gradient"]
        floor.update({
            "fgm adversarial": (embgrad + plain) / plain,
            "pgd3 sum": (plain + 2 * embgrad + plain) / plain,
            "pgd3 adversarial": (3 * embgrad + plain) / plain,
            "fgm adversarial per-example": (embgrad + plain) / plain,
            # The clean pass, one power iteration (the lookups' gradient of
            # the divergence) and the divergence pass with its weight gradients.
            "vat sum": (plain + embgrad + plain) / plain,
            "vat sum relative": (plain + embgrad + plain) / plain,
        })
    return floor
