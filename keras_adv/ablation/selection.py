"""Choosing each method's epsilon from the sweep, on the validation split only.

The choice is a pure function of validation scores: `select` takes nothing
but them, and `choose` hands it only the `validation` scores of the runs, so
the test split cannot steer the choice. The runner reads the test split only
after the choice is made (see `runner.run_ablation`).
"""

import math

__all__ = ["validation_macro_f1", "select", "choose"]


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
        key = (-math.fsum(values) / len(values), spec.epsilon)
        if spec.family not in best or key < best[spec.family][0]:
            best[spec.family] = (key, spec)
    return {family: spec for family, (_, spec) in best.items()}


def choose(runs):
    """`select` on the validation macro-F1 of finished runs (`runner.RunResult`s)."""
    return select(validation_macro_f1(runs))
