"""The one-line API: turn adversarial training on or off for a compiled model."""

from keras_adv import _stacks, arguments
from keras_adv.embedding import find_embedding_layer
from keras_adv._stacks.outputs import divergence_kind
from keras_adv._stacks.passes import Settings
from keras_adv.methods import get_method

__all__ = ["adversarial_training", "remove_adversarial_training", "OBJECTIVES"]

OBJECTIVES = ("sum", "adversarial")


def adversarial_training(
    model,
    embedding_name=None,
    epsilon=None,
    *,
    method="fgm",
    steps=None,
    alpha=None,
    objective="sum",
    relative_epsilon=None,
    per_example=None,
    start_step=0,
):
    """Makes `model.fit` train adversarially in the space of one embedding
    (or, with AWP, of the model's weights).

    Each training step computes the gradient `g` of the loss w.r.t. what is
    perturbed (the rows of the embedding matrix `E` that the batch uses, or,
    with `per_example`, each example's embedded sequence), builds a
    perturbation `r` (FGM: `r = epsilon * g / ||g||`; FGSM:
    `epsilon * sign(g)`; PGD: `steps` projected steps of `alpha * g / ||g||`
    inside the `epsilon` ball), adds it at the embedding layer's lookups, and
    updates the weights from the gradients of the clean and the perturbed
    pass (`objective="sum"`) or of the perturbed pass only
    (`objective="adversarial"`, the original Keras recipe). `E` itself is
    never written: after a step it holds exactly what the optimizer update
    gives, and a step that raises leaves it as it was.

    The model keeps its class and gains no variables; saving and export work
    as for plain training. The History gains an `adversarial_loss` entry next
    to the clean `loss` (not with eager execution disabled: tf-keras's
    graph-mode loop names its entries after the compiled metrics). Calling
    this again replaces the earlier setting; it works before or after an
    earlier `fit` and survives a later `compile()`.

    Args:
        model: A compiled Keras model.
        embedding_name: Name of the embedding layer (searched through nested
            models and layers) or path of the embedding variable; required
            by every method but AWP, which perturbs weights and refuses it.
        epsilon: Positive float, the L2 norm (FGM) or radius (PGD) of the
            perturbation over the whole batch or, with `per_example`, of each
            example's, or FGSM's step of every entry; or a schedule, a
            callable of the optimizer's step count (a Keras
            `LearningRateSchedule`, say) giving each step's epsilon. None
            (the default): the method's default size, relative to what it
            perturbs (`relative_epsilon`; FGM 0.01 on the matrix, 0.003 per
            example; `keras_adv.RELATIVE_DEFAULTS` has every method's).
        method: A name of `keras_adv.methods.NAMES` (`"fgm"`, `"fgsm"`,
            `"pgd"`, `"freelb"`, `"gradient_penalty"`, `"vat"`, `"awp"`,
            `"rdrop"`, `"neftune"`), or a method object such as
            `keras_adv.PGD(...)` (then `epsilon`, `steps` and `alpha` are its
            own; each class's docstring gives its formula). FreeLB
            always works per example; its update is the mean of its K
            passes' gradients (History's `adversarial_loss`: their mean
            loss). The gradient penalty adds `weight / 2 * ||dL/dE||^2` to
            the loss instead of perturbing (History: `gradient_penalty`, the
            term's mean). VAT adds `weight * D(p(e) || p(e + r))`, per
            example, to the loss (History: `vat_divergence`, `D`'s mean);
            it needs no labels. AWP perturbs the selected weights (by default
            every weight matrix) within a box of `epsilon` times each
            entry's size; its `epsilon` defaults to 0.01,
            `alpha` to 1.0, `steps` to 1. R-Drop and NEFTune take `alpha`
            alone (R-Drop's divergence weight, default 1, History:
            `rdrop_divergence`; NEFTune's noise scale, default 5).
        steps: PGD's number of steps K (default 3; FreeLB's passes, 3; AWP's
            steps, 1; VAT's power iterations, 1); FGM and FGSM take none.
        alpha: PGD's step length (default relative 0.003 on the matrix,
            0.001 per example; absolute 0.3; FreeLB's relative 0.002,
            absolute 0.1; AWP's 1.0, relative to each weight's norm); FGM,
            FGSM and VAT take none.
        objective: `"sum"` (clean + adversarial gradients, the default) or
            `"adversarial"` (adversarial gradient only).
        relative_epsilon: If True, the sizes (`epsilon`, PGD's and
            FreeLB's `alpha`, VAT's `xi`) are fractions of the L2 norm `n`
            of what is perturbed: the batch's touched embedding rows (each
            distinct token's row once) or, with `per_example`, each
            example's embedded sequence over its non-padding positions.
            FGM adds `r = epsilon * n * g / ||g||`, so `epsilon=0.01` moves
            the rows by 1% of their own size whatever the scale of the
            model's embeddings. FGSM's step is in units of the
            root-mean-square entry (`n / sqrt(entries)`), which gives it
            FGM's norm. The gradient penalty becomes `weight * n * ||g||`,
            the first-order gain of FGM at relative size `weight`. If False,
            sizes are absolute, as in the published recipes (bert4keras's
            `epsilon=0.5`). None (the default): relative when no size is
            given (neither `epsilon` nor `alpha`, and the method named by a
            string), so the defaults train on any model; absolute otherwise,
            and for a method object's own sizes. AWP's sizes are relative
            to each weight already.
        per_example: If True, each example's embedded sequence (the
            lookup's output, `T x d`) gets its own perturbation, normalised
            (FGM) or projected (PGD) over its non-padding positions (Miyato
            et al. 2017), instead of the touched rows of the matrix that all
            examples share. Padding comes from the layer's `mask_zero`, a
            KerasHub `padding_mask` input, or token 0 for bert4keras. Unset
            (None): the method's own mode, per example for FreeLB and VAT only.
        start_step: Train plainly until the optimizer has made this many
            updates, then adversarially (a warm-up), in the same compiled
            train function.

    Returns:
        `model`, for chaining.

    Raises:
        ValueError: For a bad `epsilon`, `steps`, `alpha`, `method` or
            `objective`, a parameter the method does not take, a model that
            is not compiled, or an embedding name that matches nothing or
            several embeddings.
        TypeError: For an argument of the wrong type, or a name that matches
            a layer without an embedding matrix.
        NotImplementedError: For a training stack not supported yet.

    Example:

    ```python
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    keras_adv.adversarial_training(model, "embedding", epsilon=0.5)
    model.fit(x, y, epochs=3)
    ```
    """
    stack = _stacks.stack_for(model)
    schedule = epsilon if callable(epsilon) else None
    if schedule is not None:
        # The method is built with the schedule's first value (1.0 where a
        # ramp starts at 0); each step then passes the schedule's own value.
        epsilon = arguments.first_epsilon(schedule) or 1.0
    if relative_epsilon is not None:
        relative_epsilon = arguments.flag("relative_epsilon", relative_epsilon)
    if per_example is not None:
        per_example = arguments.flag("per_example", per_example)
    if relative_epsilon is None:  # Relative where the user gave no size.
        relative_epsilon = isinstance(method, str) and epsilon is None and alpha is None \
            and get_method(method).relative
    adversary = get_method(
        method, epsilon=epsilon, steps=steps, alpha=alpha, relative=relative_epsilon, per_example=per_example
    )
    start_step = arguments.count("start_step", start_step, minimum=0)
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}. Expected one of {OBJECTIVES}.")
    if not stack.is_compiled(model):
        raise ValueError(
            f"Model '{model.name}' is not compiled. Call `model.compile(...)` "
            f"first, then `adversarial_training`."
        )
    _check_options(model, adversary, embedding_name, relative_epsilon, per_example, objective)
    layer = find_embedding_layer(model, embedding_name) if adversary.embedding else None
    if per_example is None:  # Not stated: the method's own mode.
        per_example = bool(adversary.modes) and adversary.modes[0]
    if adversary.compares_outputs:
        divergence_kind(model, adversary)  # The outputs' distribution, or a clear error.
    stack.install(
        model, layer,
        Settings(adversary, objective, relative_epsilon, per_example, start_step, schedule),
    )
    return model


def _check_options(model, method, embedding_name, relative_epsilon, per_example, objective):
    """Refuses what `method` cannot honour, saying what would work."""
    name = type(method).__name__
    if not method.embedding:
        given = [option for option, value in (
            ("embedding_name", embedding_name is not None), ("relative_epsilon", relative_epsilon),
            ("per_example", per_example is not None),
        ) if value]
        if given:
            what = ("the model's weights (chosen by `AWP(weights=...)`)" if method.plan == "weight_attack"
                    else "nothing: it compares two training passes' outputs")
            raise ValueError(
                f"{name} perturbs {what}, not an embedding, so it takes no "
                f"{', '.join(f'`{n}`' for n in given)}. Call "
                f"`adversarial_training(model, method={name.lower()!r}, ...)`."
            )
        if method.plan == "weight_attack" and model.built:  # Else at the first step, once the weights exist.
            method.selected(model.trainable_variables, model.name)
    elif embedding_name is None:
        raise ValueError(
            f"Method {name} perturbs an embedding: name its layer, "
            f"as in `adversarial_training(model, 'Embedding-Token', ...)` "
            f"(`keras_adv.embedding_candidates(model)` lists them). Only AWP and R-Drop, "
            f"which perturb no embedding, take no embedding name."
        )
    if relative_epsilon and not method.relative:
        raise ValueError(
            f"{name}'s sizes are absolute (`alpha` scales noise of a fixed form), so it "
            f"takes no `relative_epsilon`. Drop it."
        )
    if method.fixed_update and objective != "sum":
        raise ValueError(f"{method.fixed_update} Drop `objective`.")
    if per_example is not None and method.embedding and per_example not in method.modes:
        raise ValueError(
            f"{name} perturbs each example's embedded sequence; it has "
            f"no matrix mode. Drop per_example=False (or use PGD for the matrix)."
        )


def remove_adversarial_training(model):
    """Makes `model.fit` train plainly again: an off switch.

    On a model without adversarial training (never given to
    `adversarial_training`, or switched off already) it does nothing.

    Args:
        model: A Keras model.

    Returns:
        `model`.

    Raises:
        TypeError: If `model` is not a Keras model.
    """
    stack = _stacks.stack_for(model)
    if stack.is_installed(model):
        stack.uninstall(model)
    return model
