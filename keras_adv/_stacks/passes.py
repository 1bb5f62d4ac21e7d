"""The order of passes in an adversarial step, shared by every stack.

1. The clean pass: the loss, and the gradient w.r.t. the lookups' outputs
   (plus the weight gradients when the update uses the clean loss).
2. `method.steps` perturbed passes, each built from the gradient of the pass
   before; the weight gradients are asked for on the last pass only.
3. One optimizer update from clean + adversarial, or adversarial only.

FreeLB has no separate clean pass: its first pass runs at its random start
(the clean one where that is 0) and is one of its K; every pass gives weight
gradients (of `L / K`), and the update is their sum (`free_lb`).

A method that perturbs nothing (`GradientPenalty`, `steps == 0`) runs the
clean pass alone, adds `penalty_term` of the gradient w.r.t. its lookups
to the loss, and updates from that loss's gradient (a second-order
one: each stack differentiates the lookups' gradient again).

A stack supplies `perturbed_pass(perturbation, last) -> Pass`: the model run
with the method's perturbation (of the touched rows, or of each example's
sequence) added at its lookups.

VAT (`virtual_adversarial`) probes each example's direction of steepest
divergence from the clean outputs by power iteration, then trains on the
divergence at that perturbation, added to the clean loss.

AWP perturbs weights instead (`weight_attack`): its passes run the model on
perturbed copies of the selected weights (the clean pass's gradients of
those weights start the ascent), never on the variables themselves.
"""

import collections
import dataclasses
import random

from keras_adv._stacks.schedule import scheduled_epsilon
from keras_adv.methods import FGSM, VAT, FreeLB, math_for

__all__ = [
    "AdversarialStep", "Settings", "Pass", "attack", "ascent", "relative_unit", "penalty_term", "free_lb",
    "virtual_adversarial",
    "weight_attack",
    "selected_weights", "update_gradients", "epsilon_now",
    "no_lookup_error", "no_lookup_gradient_error", "history_name", "PENALTY_ACROSS_REPLICAS",
]

PENALTY_ACROSS_REPLICAS = (
    "The gradient penalty on the matrix under a distribution strategy with several "
    "replicas is not supported: its gradient would run back through the all-reduce "
    "of the touched rows. Use per_example=True (each example's gradient is its "
    "replica's own), or one device."
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `adversarial_training` was asked for, checked.

    Attributes:
        method: A `keras_adv.FGM`, `FGSM`, `PGD`, `FreeLB`, `GradientPenalty`, `VAT` or `AWP`.
        objective: `"sum"` or `"adversarial"`.
        relative_epsilon: Whether the method's lengths (epsilon, alpha) are
            fractions of the L2 norm of what is perturbed (the touched
            embedding rows, or each example's embedded sequence).
        per_example: Whether each example's embedded sequence gets its own
            perturbation, instead of the touched rows of the matrix.
        start_step: How many optimizer updates are plain before the
            adversarial ones start (0: from the first).
        epsilon_schedule: A callable of the optimizer's step giving each
            step's epsilon, or None for the method's own.
    """

    method: object
    objective: str = "sum"
    relative_epsilon: bool = False
    per_example: bool = False
    start_step: int = 0
    epsilon_schedule: object = None

Pass = collections.namedtuple(
    "Pass", ["loss", "gradients", "lookups", "lookup_gradients", "predictions"], defaults=[None]
)
Pass.__doc__ = """What one pass computed.

Attributes:
    loss: The loss of the pass.
    gradients: The gradients of the weights it was asked for (maybe none).
    lookups: Its `Lookups` (ids and outputs).
    lookup_gradients: The gradient w.r.t. each lookup's output, or None
        where the pass did not need them (the last one).
    predictions: The model's outputs, where the step needs them (the clean
        pass's, for the compiled metrics).
"""


class AdversarialStep:
    """What every stack's step holds: the embedding layer and the settings.

    Each stack subclasses it with `__call__(model, ...)` for its own step
    contract, and is bound to one model with `types.MethodType`.

    Args:
        layer: The embedding layer whose lookups are perturbed (None for AWP).
        settings: The `Settings`.
    """

    # Autograph (tf-keras with jit_compile) reads the name of what it converts.
    __name__ = "train_step"

    def __init__(self, layer, settings):
        self.layer = layer
        self.settings = settings
        # The seed of FreeLB's random start and VAT's noise, drawn from Python's generator
        # (which `keras.utils.set_random_seed` seeds): each step's noise is a
        # stateless function of it and the step count, so the model gains no
        # random state.
        self.seed = random.getrandbits(31)


def attack(step, space, clean, perturbed_pass, epsilon=None):
    """Runs the method's perturbed passes; returns the last one's `Pass`.

    With `relative_epsilon`, the method works in units of the norm `n` of
    what it perturbs (`space.unit()`), and each pass adds `n` times its
    perturbation: FGM's `r = epsilon * n * g / ||g||`, PGD's steps of
    `alpha * n` in the ball of radius `epsilon * n`.

    Args:
        step: The stack's `AdversarialStep`.
        space: What the method perturbs, built from the clean pass: the
            `TouchedRows` of the batch, or its `ExampleRows`.
        clean: The clean `Pass`.
        perturbed_pass: `(perturbation, last) -> Pass`.
        epsilon: This step's epsilon (`settings.epsilon_schedule`'s value),
            or None for the method's own.
    """
    return ascent(step, space, clean, perturbed_pass, epsilon)[-1]


def ascent(step, space, first, perturbed_pass, epsilon=None, start=None):
    """The passes of the method's ascent: `first`, then `method.steps`
    perturbed passes (FreeLB: `steps - 1`, its first pass being one of its K),
    each perturbation built from the gradient of the pass before.

    Args:
        start: The perturbation `first` ran at (FreeLB's random start, in the
            space's rows), or None for the clean pass.

    Returns:
        The list of `Pass`es, `first` included.
    """
    method, relative = step.settings.method, step.settings.relative_epsilon
    if relative:
        unit = relative_unit(method, space)
        if start is not None:  # The random start, in the method's units.
            start = start / _safe(unit)
    count = method.steps - 1 if isinstance(method, FreeLB) else method.steps
    passes, perturbation = [first], start
    for i in range(count):
        latest = passes[-1]
        gradient = space.rows(latest.lookups.ids, latest.lookup_gradients)
        perturbation = method.ascend(
            perturbation, gradient, per_example=space.per_example, epsilon=epsilon
        )
        passes.append(perturbed_pass(unit * perturbation if relative else perturbation, i == count - 1))
    return passes


def relative_unit(method, space):
    """What a relative size is a fraction of: the L2 norm of what is
    perturbed (the touched rows, or each example's non-padding sequence), or
    for a sign method (FGSM), whose size is every entry's step, the
    root-mean-square entry of it."""
    unit = space.unit()
    if isinstance(method, FGSM):
        return unit / (space.entries() ** 0.5 + 1e-12)
    return unit


def penalty_term(settings, space, gradient):
    """The gradient penalty's term of `gradient` (the lookups' gradient as
    the `space`'s rows): absolute, or with `relative_epsilon` scale-free, in
    units of the norm of what is perturbed (`GradientPenalty.penalty`)."""
    unit = relative_unit(settings.method, space) if settings.relative_epsilon else None
    return settings.method.penalty(gradient, unit, per_example=space.per_example)


def _safe(unit):
    """`unit` where it is not 0 (an example of padding only), else 1."""
    ops = math_for(unit)
    return ops.where(ops.greater(unit, 0), unit, ops.ones_like(unit))


def free_lb(step, first_pass, space_of, perturbed_pass, add, epsilon=None):
    """FreeLB's K passes and its update, every pass's weight gradients summed.

    Args:
        step: The stack's `AdversarialStep`.
        first_pass: `() -> (Pass, starts)`: the first pass, at the random
            start (where `init_magnitude` > 0), with weight gradients of
            `L / K` and, for K > 1, lookup gradients; `starts` is what each
            lookup got added (empty for none).
        space_of: `Pass -> ExampleRows` of the first pass.
        perturbed_pass: `(space, perturbation, last) -> Pass`, with weight
            gradients of `L / K`, and lookup gradients unless `last`.
        add: Adds two gradients.
        epsilon: This step's radius (a schedule's value), or None.

    Returns:
        `(first Pass, the summed gradients, the passes' mean loss)`.
    """
    first, starts = first_pass()
    space = space_of(first)
    start = space.rows(first.lookups.ids, starts) if starts else None
    passes = ascent(
        step, space, first, lambda perturbation, last: perturbed_pass(space, perturbation, last),
        epsilon, start=start,
    )
    gradients, loss = first.gradients, first.loss
    for later in passes[1:]:
        gradients = [add(a, b) for a, b in zip(gradients, later.gradients)]
        loss = loss + later.loss
    return first, gradients, loss / len(passes)


def virtual_adversarial(step, space, noises, divergence_pass, epsilon=None):
    """VAT's passes after the clean one; returns the last (adversarial) `Pass`.

    Args:
        step: The stack's `AdversarialStep`.
        space: The clean pass's `ExampleRows` (VAT works per example).
        noises: Random noise of each lookup output's shape (the first
            probing direction, once masked and normalised).
        divergence_pass: `(perturbation, last) -> Pass` of the divergence
            from the clean outputs, with the lookups' gradients unless
            `last`, then with the weights' gradients of `weight * D`.
        epsilon: This step's epsilon (a schedule's value), or None.
    """
    method = step.settings.method
    # With relative sizes, `xi` and `epsilon` are fractions of each
    # example's own norm; the directions themselves are unit-free.
    unit = relative_unit(method, space) if step.settings.relative_epsilon else 1.0
    direction = method.direction(space.rows(None, noises))
    for _ in range(method.power_iterations):
        probe = divergence_pass(unit * direction, False)
        direction = method.direction(space.rows(probe.lookups.ids, probe.lookup_gradients))
    return divergence_pass(unit * method.perturbation(direction, epsilon), True)


def weight_attack(step, clean, indices, originals, perturbed_pass, add, dense=None, epsilon=None,
                  reduce=None):
    """AWP's ascent over the selected weights, and the update.

    Args:
        step: The stack's `AdversarialStep`.
        clean: The clean `Pass`, with every trainable weight's gradient.
        indices: Which trainable weights are perturbed (`selected_weights`).
        originals: Their values before the step.
        perturbed_pass: `perturbations -> Pass`, the model run on the
            selected weights plus `perturbations`, with every trainable
            weight's gradient.
        add: Adds two gradients; None where the stack's update
            differentiates the passes' losses itself (tf-keras graph mode).
        dense: Makes the selected weights' gradients dense tensors (a sparse
            or missing one), or None where they are.
        epsilon: This step's box (a schedule's value), or None.
        reduce: Sums the replicas' gradients of the selected weights (a
            distributed step), or None: the norms are the global batch's.

    Returns:
        `(the last perturbed Pass, the gradients to apply or None)`.
    """
    method = step.settings.method
    latest, perturbations = clean, [None] * len(indices)
    for _ in range(method.steps):
        gradients = [latest.gradients[i] for i in indices]
        if dense is not None:
            gradients = dense(gradients)
        if reduce is not None:
            gradients = reduce(gradients)
        perturbations = [
            method.ascend(r, g, w, epsilon) for r, g, w in zip(perturbations, gradients, originals)
        ]
        latest = perturbed_pass(perturbations)
    if add is None:
        return latest, None
    return latest, update_gradients(step.settings.objective, clean.gradients, latest.gradients, add)


def selected_weights(method, variables, model_name):
    """The indices of the trainable `variables` that AWP's `method` perturbs.

    Raises:
        ValueError: If it selects none.
    """
    names = [getattr(v, "path", None) or v.name for v in variables]
    indices = [i for i, (v, name) in enumerate(zip(variables, names)) if method.selects(v, name)]
    if not indices:
        raise ValueError(
            f"AWP's `weights` ({method.weights!r}) selects none of the trainable weights "
            f"of model '{model_name}': {names}. Pass a regular expression found in "
            f"some of these names, a callable, or None for every weight matrix."
        )
    return indices


def update_gradients(objective, clean_grads, adversarial_grads, add):
    """The gradients the optimizer applies: clean + adversarial, or adversarial only."""
    if objective == "adversarial":
        return list(adversarial_grads)
    return [add(c, a) for c, a in zip(clean_grads, adversarial_grads)]


def history_name(settings):
    """The History entry of what the step adds: the adversarial loss, the
    penalty, or VAT's divergence term."""
    if isinstance(settings.method, VAT):
        return "vat_divergence"
    return "gradient_penalty" if settings.method.steps == 0 else "adversarial_loss"


def epsilon_now(settings, step_count):
    """This step's epsilon under `settings.epsilon_schedule` (a float32 scalar
    of the framework of `step_count`, checked: `schedule.scheduled_epsilon`),
    or None without a schedule."""
    if settings.epsilon_schedule is None:
        return None
    return scheduled_epsilon(settings.epsilon_schedule, step_count)


def no_lookup_error(layer):
    return ValueError(
        f"The model never looked up token ids through layer '{layer.name}'. "
        f"Name the embedding layer that the model's inputs go through."
    )


def no_lookup_gradient_error(layer):
    return ValueError(
        f"The loss does not depend on the lookups of embedding layer "
        f"'{layer.name}', so they cannot be perturbed. Name the embedding layer "
        f"that the model's inputs go through."
    )
