"""The step plans: which passes an adversarial step runs, in what order, and
what it updates from, written once for every stack (docs/design.md, "One
plan, an adapter per stack").

`planned_step` runs the plan the method names (`method.plan`), or a plain
step during the warm-up, with this step's epsilon (a schedule's, checked).
A plan speaks to the stack through an adapter made for each step:

    run(perturbation_at=None, *, weights=False, lookup_gradients=False,
        scale=None, clean=False, reference=None, shifted=None) -> Pass
        One differentiated pass, `perturbation_at(index, ids, outputs)` added
        to the output of its `index`-th lookup. It gives the gradients of the
        loss (times `scale`) w.r.t. every trainable weight (`weights`) and
        the lookups' outputs (`lookup_gradients`). The loss trackers and
        metrics see the `clean` pass only; with `reference` (clean outputs)
        the loss is the divergence from them; `shifted` maps trainable
        weights' indices to perturbations the pass reads them with.
    differentiate(objective) -> (gradients, aux)
        The weight gradients of `objective(forward) -> (loss, aux)`, built
        from training passes `forward(clean=False, lookup_gradients=False)
        -> (loss to differentiate, Pass)`, each with its own dropout, whose
        lookup gradient is differentiable again (the penalty's second
        order); `scale_loss(term, like)` scales a term added to that loss.
    space(lookups, per_example), masks(ids_list): what is perturbed
        (`rows.py`), and each lookup's non-padding positions or None.
    noise(index, like, kind): "uniform" in [-1, 1] or "normal" noise shaped
        as `like`, stateless in the step's seed, update count and `index`.
    cond(start_step, adversarial, plain) -> (Outcome, whether adversarial).
    add, dense, reduce, weight_values, stop_gradient, divergence, model,
    selected (AWP's weight indices), replicas (TensorFlow's, which split the
    batch by hand), iterations (the optimizer's update count).
"""

import collections
import dataclasses
import random

from keras_adv._stacks.checks import required, scheduled_epsilon
from keras_adv._stacks.outputs import differ
from keras_adv.methods import math_for

__all__ = [
    "AdversarialStep", "Settings", "Pass", "Outcome", "planned_step", "PLANS", "relative_unit",
    "update_gradients", "checked_lookup_gradients", "no_lookup_error", "no_lookup_gradient_error",
    "PENALTY_ACROSS_REPLICAS",
]

PENALTY_ACROSS_REPLICAS = (
    "The gradient penalty on the matrix under a distribution strategy with several "
    "replicas is not supported: its gradient would run back through the all-reduce "
    "of the touched rows. Use per_example=True (each example's gradient is its "
    "replica's own), or one device."
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `adversarial_training` was asked for, checked: a method object,
    the objective (`"sum"` or `"adversarial"`), whether its lengths are
    fractions of the norm of what is perturbed (`relative_unit`), whether it
    perturbs each example's sequence (else the touched rows of the matrix),
    how many updates are plain first, and a schedule of each step's epsilon
    (a callable of the update count) or None."""

    method: object
    objective: str = "sum"
    relative_epsilon: bool = False
    per_example: bool = False
    start_step: int = 0
    epsilon_schedule: object = None


Pass = collections.namedtuple(
    "Pass", ["loss", "gradients", "lookups", "lookup_gradients", "predictions"], defaults=[None]
)
Pass.__doc__ = """What one pass computed: its (unscaled) loss, the weight gradients it
was asked for, its `Lookups` (ids and outputs), the gradient w.r.t. each
lookup's output (or None), and the model's outputs."""

Outcome = collections.namedtuple("Outcome", ["gradients", "term", "loss", "predictions"])
Outcome.__doc__ = """What a plan computed: the gradients to apply (one per trainable
weight), the term the method reports (`method.reports`), and the clean
pass's loss and outputs (for the loss trackers and compiled metrics)."""


class AdversarialStep:
    """What every stack's step holds: the embedding layer (None for AWP and
    R-Drop), the `Settings` and its noise's seed. A stack subclasses it with
    `__call__(model, ...)`, its own step contract, bound to one model."""

    # Autograph (tf-keras with jit_compile) reads the name of what it converts.
    __name__ = "train_step"

    def __init__(self, layer, settings):
        self.layer = layer
        self.settings = settings
        # From Python's generator (which `keras.utils.set_random_seed` seeds);
        # each step's noise is stateless in it and the update count.
        self.seed = random.getrandbits(31)


def planned_step(step, adapter):
    """Runs the method's plan, or the plain step during the warm-up:
    `(Outcome, whether the step was adversarial)`."""
    settings = step.settings
    epsilon = None
    if settings.epsilon_schedule is not None:  # A float32 scalar, checked.
        epsilon = scheduled_epsilon(settings.epsilon_schedule, adapter.iterations)
    plan = PLANS[settings.method.plan]
    if not settings.start_step:
        return plan(step, adapter, epsilon), True
    return adapter.cond(settings.start_step, lambda: plan(step, adapter, epsilon), lambda: plain(adapter))


def plain(adapter):
    """A plain step: the clean pass's gradients, no term."""
    clean = adapter.run(weights=True, clean=True)
    return Outcome(clean.gradients, math_for(clean.loss).zeros_like(clean.loss), clean.loss, clean.predictions)


def _at(space, perturbation):  # `perturbation_at` of the space's rows.
    return lambda index, ids, outputs: space.at(index, ids, perturbation)


def attack(step, adapter, epsilon):
    """FGM, FGSM, PGD: the clean pass, `steps` perturbed passes, each from the
    gradient of the one before; the update from clean + the last, or the last
    (then the clean pass asks only for the lookups' gradients: its floor)."""
    settings = step.settings
    clean = adapter.run(weights=settings.objective == "sum", lookup_gradients=True, clean=True)
    space = adapter.space(clean.lookups, settings.per_example)

    def perturbed(perturbation, last):
        return adapter.run(_at(space, perturbation), weights=last, lookup_gradients=not last)

    last = ascent(step, space, clean, perturbed, settings.method.steps, epsilon)[-1]
    gradients = update_gradients(settings.objective, clean.gradients, last.gradients, adapter.add)
    return Outcome(gradients, last.loss, clean.loss, clean.predictions)


def ascent(step, space, first, perturbed, count, epsilon, start=None):
    """`[first]` and `count` passes `perturbed(perturbation, last)`, each
    perturbation `method.ascend`ed from the gradient of the pass before;
    `start` is where `first` ran (FreeLB's random start), or None (clean)."""
    method, relative = step.settings.method, step.settings.relative_epsilon
    if relative:
        unit = relative_unit(method, space)
        if start is not None:  # The random start, in the method's units (1 for padding only).
            ops = math_for(unit)
            start = start / ops.where(ops.greater(unit, 0), unit, ops.ones_like(unit))
    passes, perturbation = [first], start
    for i in range(count):
        latest = passes[-1]
        gradient = space.rows(latest.lookups.ids, latest.lookup_gradients)
        perturbation = method.ascend(perturbation, gradient, per_example=space.per_example, epsilon=epsilon)
        passes.append(perturbed(unit * perturbation if relative else perturbation, i == count - 1))
    return passes


def free_lb(step, adapter, epsilon):
    """FreeLB: K passes from a random start (the first is the clean pass where
    the start is 0), every one's weight gradients (of `L / K`) summed, and
    the update from their sum alone."""
    method = step.settings.method
    scale, starts = 1 / method.steps, []

    def start_at(index, ids, outputs):
        starts.append(random_start(method, adapter, index, ids, outputs))
        return starts[-1]

    first = adapter.run(
        start_at if method.init_magnitude else None, weights=True,
        lookup_gradients=method.steps > 1, scale=scale, clean=True,
    )
    space = adapter.space(first.lookups, per_example=True)
    start = space.rows(first.lookups.ids, starts) if starts else None

    def perturbed(perturbation, last):
        return adapter.run(_at(space, perturbation), weights=True, lookup_gradients=not last, scale=scale)

    passes = ascent(step, space, first, perturbed, method.steps - 1, epsilon, start=start)
    gradients, loss = first.gradients, first.loss
    for later in passes[1:]:
        gradients = [adapter.add(a, b) for a, b in zip(gradients, later.gradients)]
        loss = loss + later.loss
    return Outcome(gradients, loss / len(passes), first.loss, first.predictions)


def random_start(method, adapter, index, ids, outputs):
    """`method.initial` (FreeLB's random start, NEFTune's noise) of lookup
    `index`: uniform noise of its output's shape, zero at padding, each
    example's scaled by its non-padding entries."""
    noise = adapter.noise(index, outputs, "uniform")
    ops = math_for(noise)
    mask = adapter.masks([ids])[0]
    mask = ops.ones_like(noise) if mask is None else ops.ones_like(noise) * ops.cast(mask, "float32")[..., None]
    rows = (ops.shape(noise)[0], -1)
    return ops.reshape(method.initial(ops.reshape(noise, rows), ops.reshape(mask, rows)), ops.shape(noise))


def noisy_pass(step, adapter, epsilon):
    """NEFTune: one pass with its noise at the lookups, trained on alone."""
    del epsilon
    method = step.settings.method
    noisy = adapter.run(
        lambda index, ids, outputs: random_start(method, adapter, index, ids, outputs),
        weights=True, clean=True,
    )
    return Outcome(noisy.gradients, noisy.loss, noisy.loss, noisy.predictions)


def penalized(step, adapter, epsilon):
    """The gradient penalty: the clean pass alone, its loss plus
    `penalty_term` of its lookups' gradient, differentiated again."""
    del epsilon
    settings = step.settings
    if not settings.per_example and adapter.replicas > 1:
        raise NotImplementedError(PENALTY_ACROSS_REPLICAS)

    def objective(forward):
        scaled, clean = forward(clean=True, lookup_gradients=True)
        space = adapter.space(clean.lookups, settings.per_example)
        # Relative: scale-free, in units of the norm of what is perturbed.
        unit = relative_unit(settings.method, space) if settings.relative_epsilon else None
        gradient = space.rows(clean.lookups.ids, clean.lookup_gradients)
        penalty = settings.method.penalty(gradient, unit, per_example=space.per_example)
        return scaled + adapter.scale_loss(penalty, scaled), (penalty, clean.loss, clean.predictions)

    gradients, (penalty, loss, predictions) = adapter.differentiate(objective)
    return Outcome(gradients, penalty, loss, predictions)


RDROP_WITHOUT_RANDOMNESS = (  # No quotes: TensorFlow's assertion escapes them.
    "R-Drop: the two training passes of model {name} gave identical outputs. Nothing on "
    "the way to its outputs is random in training (no dropout), or, with eager execution "
    "disabled under a graph-level seed (tf.random.set_seed), the dropout of both passes draws "
    "one mask; so R-Drop would be a plain step at twice its cost. Give the model dropout "
    "(keras.layers.Dropout(0.1), or dropout=0.1 in a KerasHub backbone), train eagerly or "
    "unseeded, or use another method."
)


def twin_passes(step, adapter, epsilon):
    """R-Drop: two training passes, their mean loss plus `alpha / 2` times the
    symmetric divergence of their outputs (`RDrop`); a step whose passes
    agree (a model without dropout) raises."""
    del epsilon
    method = step.settings.method

    def objective(forward):
        scaled, first = forward(clean=True)
        other_scaled, second = forward()  # Its own dropout masks.
        divergence = adapter.divergence(first.predictions, second.predictions)
        total = (scaled + other_scaled) / 2 + adapter.scale_loss((method.alpha / 2) * divergence, scaled)
        return total, (divergence, first.loss, first.predictions, differ(first.predictions, second.predictions))

    gradients, (divergence, loss, predictions, passes_differ) = adapter.differentiate(objective)
    error = lambda: ValueError(RDROP_WITHOUT_RANDOMNESS.format(name=adapter.model.name))
    gradients, divergence = required(passes_differ, (gradients, divergence), error)
    return Outcome(gradients, divergence, loss, predictions)


def virtual_adversarial(step, adapter, epsilon):
    """VAT: the clean pass, the power iterations on the divergence from its
    outputs, and `weight` times the divergence at the perturbation added to
    the clean loss."""
    settings = step.settings
    method = settings.method
    clean = adapter.run(weights=True, clean=True)
    space = adapter.space(clean.lookups, per_example=True)
    reference = adapter.stop_gradient(clean.predictions)
    # With relative sizes, `xi` and `epsilon` are fractions of each
    # example's own norm; the directions themselves are unit-free.
    unit = relative_unit(method, space) if settings.relative_epsilon else 1.0

    def divergence_pass(perturbation, last):
        return adapter.run(
            _at(space, unit * perturbation), weights=last, lookup_gradients=not last,
            scale=method.weight if last else None, reference=reference,
        )

    noises = [adapter.noise(index, output, "normal") for index, output in enumerate(clean.lookups.outputs)]
    direction = method.direction(space.rows(None, noises))
    for _ in range(method.power_iterations):
        probe = divergence_pass(direction, False)
        direction = method.direction(space.rows(probe.lookups.ids, probe.lookup_gradients))
    last = divergence_pass(method.perturbation(direction, epsilon), True)
    gradients = update_gradients("sum", clean.gradients, last.gradients, adapter.add)
    return Outcome(gradients, last.loss, clean.loss, clean.predictions)


def weight_attack(step, adapter, epsilon):
    """AWP: the clean pass's gradients of the selected weights start the
    ascent; each perturbed pass reads perturbed copies of them."""
    settings = step.settings
    method = settings.method
    clean = adapter.run(weights=True, clean=True)
    indices = adapter.selected
    originals = adapter.weight_values(indices)
    latest, perturbations = clean, [None] * len(indices)
    for _ in range(method.steps):
        gradients = adapter.reduce(adapter.dense([latest.gradients[i] for i in indices], indices))
        perturbations = [method.ascend(r, g, w, epsilon) for r, g, w in zip(perturbations, gradients, originals)]
        latest = adapter.run(weights=True, shifted=dict(zip(indices, perturbations)))
    gradients = update_gradients(settings.objective, clean.gradients, latest.gradients, adapter.add)
    return Outcome(gradients, latest.loss, clean.loss, clean.predictions)


# Each method's `plan` names its entry.
PLANS = {
    "attack": attack, "free_lb": free_lb, "penalized": penalized, "virtual_adversarial": virtual_adversarial,
    "weight_attack": weight_attack, "twin_passes": twin_passes, "noisy_pass": noisy_pass,
}


def relative_unit(method, space):
    """What a relative size is a fraction of: the L2 norm of what is
    perturbed (the touched rows, or each example's non-padding sequence), or
    for a sign method (FGSM), whose size is every entry's step, the
    root-mean-square entry of it."""
    unit = space.unit()
    if method.per_entry:
        return unit / (space.entries() ** 0.5 + 1e-12)
    return unit


def update_gradients(objective, clean_grads, adversarial_grads, add):
    """The gradients the optimizer applies: clean + adversarial, or adversarial only."""
    if objective == "adversarial":
        return list(adversarial_grads)
    return [add(c, a) for c, a in zip(clean_grads, adversarial_grads)]


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


def checked_lookup_gradients(layer, lookups, gradients, dense=lambda g: g):
    """The gradient w.r.t. each lookup's output, `dense` (zeros where the loss
    does not reach it), of a pass whose loss reaches at least one."""
    if all(g is None for g in gradients):
        raise no_lookup_gradient_error(layer)
    return [math_for(o).zeros_like(o) if g is None else dense(g) for o, g in zip(lookups.outputs, gradients)]
