"""Growing each method's sweep and choosing its epsilon, on the validation split only.

The extension of a sweep past its edge (`extensions`), the choice (`select`)
and the verdict against plain (`plain_recommended`) are pure functions of
validation scores: the runner hands them only the `validation` scores of its
runs (`validation_macro_f1`), so the test split cannot steer the sweep or the
choice. The runner reads the test split only after the choice is made (see
`runner.run_ablation`).
"""

import dataclasses
import math

from keras_adv.ablation.config import EXTENSION_FACTOR, MAX_EXTENSIONS

__all__ = [
    "validation_macro_f1", "mean", "best_epsilon", "next_epsilon", "extensions", "select", "choose",
    "plain_recommended",
]


def validation_macro_f1(runs):
    """The validation macro-F1 of every configuration, one value per seed.

    Args:
        runs: `runner.RunResult`s.

    Returns:
        A dict `{MethodSpec: [macro-F1 of each seed, in seed order]}`, in the
        order the configurations were first trained.
    """
    scores = {}
    for run in sorted(runs, key=lambda r: r.seed):
        scores.setdefault(run.spec, []).append(run.validation.macro_f1)
    return {spec: scores[spec] for spec in dict.fromkeys(r.spec for r in runs)}


def mean(values):
    """The mean of a configuration's per-seed scores, summed exactly
    (`math.fsum`), so that the seed order cannot break a tie."""
    if not values:
        raise ValueError("No validation scores to average.")
    return math.fsum(values) / len(values)


def best_epsilon(mean_by_epsilon):
    """The epsilon with the best mean score; a tie goes to the smaller one
    (the milder perturbation, the closer to plain training)."""
    return min(mean_by_epsilon, key=lambda epsilon: (-mean_by_epsilon[epsilon], epsilon))


def next_epsilon(mean_by_epsilon, steps_taken=0, *, factor=EXTENSION_FACTOR, max_steps=MAX_EXTENSIONS):
    """Where one method's sweep grows next, from its mean validation scores.

    When the best epsilon is the sweep's largest, the next one is that edge
    times `factor`; when it is the smallest, that edge divided by `factor`
    (each rounded to two significant digits, so the labels stay readable);
    when it is interior, or the sweep has grown `max_steps` times already,
    or it has fewer than two points (nothing to sweep), there is none.

    Args:
        mean_by_epsilon: `{epsilon: mean validation macro-F1}` of every
            epsilon tried so far.
        steps_taken: How many times this sweep has grown already.
        factor: The step past an edge.
        max_steps: The bound on the number of steps.

    Returns:
        The next epsilon, or None.

    Example:

    >>> next_epsilon({0.1: 0.80, 0.3: 0.82, 1.0: 0.84})
    3.0
    >>> next_epsilon({0.1: 0.85, 0.3: 0.82, 1.0: 0.84})
    0.033
    >>> next_epsilon({0.1: 0.80, 0.3: 0.85, 1.0: 0.84}) is None
    True
    """
    if len(mean_by_epsilon) < 2 or steps_taken >= max_steps:
        return None
    best = best_epsilon(mean_by_epsilon)
    if best == max(mean_by_epsilon):
        return float(f"{best * factor:.2g}")
    if best == min(mean_by_epsilon):
        return float(f"{best / factor:.2g}")
    return None


def extensions(validation_scores, planned, *, factor=EXTENSION_FACTOR, max_steps=MAX_EXTENSIONS):
    """The configurations that grow the sweeps whose best sits at an edge.

    Only a sweep (a family with two or more epsilons in `planned`) grows;
    each grows by at most one configuration per call, as `next_epsilon`
    says, in the units and settings of its edge configuration.

    Args:
        validation_scores: `{MethodSpec: [validation macro-F1 per seed]}`
            of every configuration trained so far.
        planned: The configurations planned before any extension
            (`AblationConfig.configurations`).
        factor, max_steps: As in `next_epsilon`.

    Returns:
        A tuple of new `MethodSpec`s, families in the order first seen.
    """
    planned_sizes = {}
    for spec in planned:
        planned_sizes.setdefault(spec.family, set()).add(spec.epsilon)
    tried = {}
    for spec, values in validation_scores.items():
        if spec.name != "plain":
            tried.setdefault(spec.family, {})[spec.epsilon] = (spec, mean(values))
    grown = []
    for family, members in tried.items():
        if len(planned_sizes.get(family, ())) < 2:
            continue
        steps_taken = len(members.keys() - planned_sizes[family])
        means = {epsilon: value for epsilon, (_, value) in members.items()}
        epsilon = next_epsilon(means, steps_taken, factor=factor, max_steps=max_steps)
        if epsilon is not None and epsilon not in members:
            edge, _ = members[best_epsilon(means)]
            grown.append(dataclasses.replace(edge, epsilon=epsilon))
    return tuple(grown)


def select(validation_scores):
    """For each method (and mode), the epsilon with the best mean validation macro-F1.

    Configurations that differ only in their epsilon form a family
    (`MethodSpec.family`), and one configuration of each family is chosen.
    Plain training is the baseline and is never chosen. Ties (an equal mean,
    summed exactly with `math.fsum` so the seed order cannot break one) go to
    the smaller epsilon: the milder perturbation, the closer to plain
    training.

    Args:
        validation_scores: `{MethodSpec: [validation macro-F1 per seed]}`.

    Returns:
        A dict `{family: MethodSpec}`, families in the order first seen.

    Example:

    >>> from keras_adv.ablation.config import MethodSpec
    >>> chosen = select({
    ...     MethodSpec("plain"): [0.80, 0.82],
    ...     MethodSpec("fgm", epsilon=0.1): [0.81, 0.83],
    ...     MethodSpec("fgm", epsilon=1.0): [0.84, 0.82],
    ... })
    >>> chosen["fgm"].epsilon
    1.0
    """
    best = {}
    for spec, values in validation_scores.items():
        if spec.name == "plain":
            continue
        if not values:
            raise ValueError(f"No validation scores for {spec.label!r}.")
        key = (-mean(values), spec.epsilon)
        if spec.family not in best or key < best[spec.family][0]:
            best[spec.family] = (key, spec)
    return {family: spec for family, (_, spec) in best.items()}


def choose(runs):
    """`select` on the validation macro-F1 of finished runs (`runner.RunResult`s)."""
    return select(validation_macro_f1(runs))


def plain_recommended(validation_scores):
    """The methods (and modes) of which no configuration beats plain on validation.

    Beating plain means a strictly higher mean validation macro-F1 than plain
    training's. Where none of a method's sizes does, the sweep's advice is
    plain training, whichever size `select` marks as the method's best.

    Args:
        validation_scores: `{MethodSpec: [validation macro-F1 per seed]}`.

    Returns:
        A tuple of families, in the order first seen; empty without a plain run.

    Example:

    >>> from keras_adv.ablation.config import MethodSpec
    >>> plain_recommended({
    ...     MethodSpec("plain"): [0.80, 0.82],
    ...     MethodSpec("fgm", epsilon=0.1): [0.79, 0.81],
    ...     MethodSpec("fgm", epsilon=0.1, per_example=True): [0.81, 0.83],
    ... })
    ('fgm',)
    """
    baseline = [mean(values) for spec, values in validation_scores.items() if spec.name == "plain"]
    if not baseline:
        return ()
    best = {}
    for spec, values in validation_scores.items():
        if spec.name != "plain":
            best[spec.family] = max(best.get(spec.family, -math.inf), mean(values))
    return tuple(family for family, value in best.items() if value <= baseline[0])
