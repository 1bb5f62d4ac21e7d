"""The ablation's figures: the sweep on validation, and the tested models."""

import dataclasses
import math

import numpy as np

from keras_adv.ablation import stats

__all__ = ["SweepPoint", "sweep_points", "sweep_figure", "training_figure"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # Files only: no display is needed, or wanted, on a server.
    import matplotlib.pyplot as plt

    return plt


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One configuration of the sweep in the figure: its training epsilon
    (None for plain), and its score's mean and standard deviation over seeds
    (0 with one seed, where none is defined)."""

    spec: object  # The `MethodSpec`.
    epsilon: float | None
    mean: float
    std: float
    seeds: int
    chosen: bool


def sweep_points(ablation, value):
    """Every configuration the sweep tried, as the figure draws it.

    Args:
        ablation: A `runner.Ablation`.
        value: The score of a run to plot, e.g. `lambda r: r.validation.macro_f1`.

    Returns:
        `{family: [SweepPoint, ...]}`, plain first, each family's points by
        epsilon, families in the order first trained.
    """
    chosen = set((ablation.chosen or {}).values())
    specs = list(dict.fromkeys(r.spec for r in ablation.runs))
    points = {}
    for spec in sorted(specs, key=lambda s: (s.name != "plain", s.epsilon)):
        values = [value(r) for r in ablation.runs if r.spec == spec]
        mean, std = stats.mean_std(values)
        points.setdefault(spec.family, []).append(SweepPoint(
            spec, None if spec.name == "plain" else spec.epsilon, mean, 0.0 if math.isnan(std) else std,
            len(values), spec in chosen,
        ))
    families = list(dict.fromkeys(s.family for s in specs))
    return {family: points[family] for family in sorted(points, key=lambda f: (f != "plain", families.index(f)))}


def _spaced(epsilons, ratio=1.5):
    """The epsilons to label on the axis: each at least `ratio` times the
    last one labelled, so that two sweeps' near neighbours (0.003 of one,
    0.0033 grown by another) do not print over each other."""
    ticks = []
    for epsilon in sorted(epsilons):
        if not ticks or epsilon >= ratio * ticks[-1]:
            ticks.append(epsilon)
    return ticks


def sweep_figure(ablation, attack_epsilon, path):
    """Validation macro-F1 and accuracy under attack against the training epsilon.

    One line per method (and mode) through every epsilon the sweep tried
    (its grid and what it grew by), each point the mean over seeds with an
    error bar of ± one standard deviation; plain training is a dashed
    horizontal line in a band of ± one standard deviation, and each chosen
    configuration is ringed. These are the validation scores the choice was
    made on: the test split plays no part in the figure.

    Args:
        ablation: A `runner.Ablation`.
        attack_epsilon: The epsilon of the attack in the scores.
        path: Where to write the PNG.

    Returns:
        What each panel drew: `{panel title: sweep_points(...)}`.
    """
    plt = _pyplot()
    panels = (
        ("macro-F1", lambda r: r.validation.macro_f1),
        (f"accuracy under attack (eps={attack_epsilon:g})", lambda r: r.validation.attacked_accuracy),
    )
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    epsilons = sorted({r.spec.epsilon for r in ablation.runs if r.spec.name != "plain"})
    xlabel = "training epsilon"
    if any(r.spec.relative_epsilon for r in ablation.runs):
        xlabel += " (relative: a fraction of the perturbed norm)"
    drawn = {}
    for ax, (title, value) in zip(axes, panels):
        drawn[title] = sweep_points(ablation, value)
        for family, points in drawn[title].items():
            if family == "plain":
                [plain] = points
                ax.axhline(plain.mean, color="black", linestyle="--", label="plain (band: ± std)")
                ax.axhspan(plain.mean - plain.std, plain.mean + plain.std, color="black", alpha=0.08)
                continue
            line = ax.errorbar([p.epsilon for p in points], [p.mean for p in points],
                               yerr=[p.std for p in points], marker="o", capsize=3, label=family)
            for point in points:
                if point.chosen:
                    ax.plot(point.epsilon, point.mean, marker="o", markersize=14, fillstyle="none",
                            color=line.lines[0].get_color(), linestyle="none")
        # A sweep over orders of magnitude reads better on a log axis, with
        # its own epsilons as the ticks.
        if len(epsilons) > 1 and epsilons[-1] / epsilons[0] >= 10:
            ax.set_xscale("log")
            ax.minorticks_off()
        if epsilons:
            ticks = _spaced(epsilons)
            ax.set_xticks(ticks, labels=[f"{e:g}" for e in ticks], fontsize="x-small", rotation=45)
        ax.set(title=f"Validation {title}", xlabel=xlabel, ylabel=title.split(" (")[0])
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle("The sweep on the validation split (mean ± std over seeds; ringed: chosen)", fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return drawn


def training_figure(ablation, path):
    """Validation accuracy per epoch, and test accuracy against the attack's
    epsilon, for plain and the chosen configurations (mean over seeds).

    Args:
        ablation: A `runner.Ablation` whose test phase has finished.
        path: Where to write the PNG.
    """
    import matplotlib.ticker

    plt = _pyplot()
    figure, (curves, robustness) = plt.subplots(1, 2, figsize=(11, 4))
    for spec in ablation.tested:
        runs = [r for r in ablation.runs if r.spec == spec and r.test is not None]
        if not runs:
            continue
        accuracy = np.mean([r.history["val_accuracy"] for r in runs], axis=0)
        curves.plot(np.arange(1, len(accuracy) + 1), accuracy, marker="o", label=spec.label)
        epsilons = sorted(runs[0].test.attack_curve)
        attacked = np.mean([[r.test.attack_curve[e] for e in epsilons] for r in runs], axis=0)
        robustness.plot(epsilons, attacked, marker="o", label=spec.label)
    curves.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
    curves.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    robustness.set(title="Test accuracy under an embedding FGM attack", xlabel="attack epsilon", ylabel="accuracy")
    for axes in (curves, robustness):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
