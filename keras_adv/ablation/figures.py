"""The ablation's figures: the sweep on validation, and the tested models."""

import numpy as np

__all__ = ["sweep_figure", "training_figure"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # Files only: no display is needed, or wanted, on a server.
    import matplotlib.pyplot as plt

    return plt


def _mean_by_seed(runs, spec, value):
    return float(np.mean([value(r) for r in runs if r.spec == spec]))


def sweep_figure(ablation, attack_epsilon, path):
    """Validation macro-F1 and accuracy under attack against the training epsilon.

    One line per method (and mode), the mean over seeds; plain training is a
    dashed horizontal line, and each chosen configuration is ringed. These
    are the validation scores the choice was made on: the test split plays no
    part in the figure.

    Args:
        ablation: A `runner.Ablation`.
        attack_epsilon: The epsilon of the attack in the scores.
        path: Where to write the PNG.
    """
    plt = _pyplot()
    runs = ablation.runs
    specs = list(dict.fromkeys(r.spec for r in runs))
    chosen = set((ablation.chosen or {}).values())
    panels = (
        ("macro-F1", lambda r: r.validation.macro_f1),
        (f"accuracy under attack (eps={attack_epsilon:g})", lambda r: r.validation.attacked_accuracy),
    )
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    epsilons = sorted({s.epsilon for s in specs if s.name != "plain"})
    for ax, (title, value) in zip(axes, panels):
        for spec in specs:
            if spec.name == "plain":
                ax.axhline(_mean_by_seed(runs, spec, value), color="black", linestyle="--", label="plain")
        for family in dict.fromkeys(s.family for s in specs if s.name != "plain"):
            members = sorted((s for s in specs if s.family == family), key=lambda s: s.epsilon)
            means = [_mean_by_seed(runs, s, value) for s in members]
            (line,) = ax.plot([s.epsilon for s in members], means, marker="o", label=family)
            for spec, mean in zip(members, means):
                if spec in chosen:
                    ax.plot(spec.epsilon, mean, marker="o", markersize=14, fillstyle="none",
                            color=line.get_color(), linestyle="none")
        # A sweep over orders of magnitude reads better on a log axis, with
        # its own epsilons as the ticks.
        if len(epsilons) > 1 and epsilons[-1] / epsilons[0] >= 10:
            ax.set_xscale("log")
            ax.minorticks_off()
        if epsilons:
            ax.set_xticks(epsilons, labels=[f"{e:g}" for e in epsilons])
        ax.set(title=f"Validation {title}", xlabel="training epsilon", ylabel=title.split(" (")[0])
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle("The sweep on the validation split (ringed: chosen)", fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


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
