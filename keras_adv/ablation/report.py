"""The ablation's outputs: the table (Markdown, CSV, JSON), the per-epoch
history and a figure, written to the output folder."""

import csv
import dataclasses
import json
import os

import numpy as np

__all__ = ["summarize", "markdown_table", "write_report"]

SCORES = ("peak_memory_mib", "train_seconds", "precision", "recall", "macro_f1", "accuracy", "attacked_accuracy")


def summarize(results):
    """Mean and standard deviation of every score, per method, in run order."""
    methods = list(dict.fromkeys(r.method for r in results))
    summary = []
    for method in methods:
        runs = [r for r in results if r.method == method]
        row = {"method": method, "seeds": len(runs), "memory_kind": runs[0].memory_kind}
        for score in SCORES:
            values = np.array([getattr(r, score) for r in runs], dtype="float64")
            row[score] = float(values.mean())
            row[score + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(row)
    return summary


def _mean_std(row, score, scale=1.0, digits=1):
    return f"{row[score] * scale:.{digits}f} ± {row[score + '_std'] * scale:.{digits}f}"


def markdown_table(summary, config, dataset_name):
    """The ablation table, scores in percent, as mean ± std over the seeds."""
    memory = f"peak {summary[0]['memory_kind']} mem (MiB)" if summary else "peak mem (MiB)"
    header = (
        f"| task | dataset | method | {memory} | train time (s) | precision (%) | recall (%) "
        f"| macro-F1 (%) | acc. under attack eps={config.attack_epsilon:g} (%) |"
    )
    lines = [header, "|" + " --- |" * 9]
    for row in summary:
        lines.append(
            f"| text classification ({config.model}) | {dataset_name} | {row['method']} "
            f"| {_mean_std(row, 'peak_memory_mib', digits=0)} | {_mean_std(row, 'train_seconds')} "
            f"| {_mean_std(row, 'precision', 100)} | {_mean_std(row, 'recall', 100)} "
            f"| {_mean_std(row, 'macro_f1', 100)} | {_mean_std(row, 'attacked_accuracy', 100)} |"
        )
    return "\n".join(lines)


def _figure(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (curves, robustness) = plt.subplots(1, 2, figsize=(11, 4))
    for method in dict.fromkeys(r.method for r in results):
        runs = [r for r in results if r.method == method]
        accuracy = np.mean([r.history["val_accuracy"] for r in runs], axis=0)
        curves.plot(np.arange(1, len(accuracy) + 1), accuracy, marker="o", label=method)
        epsilons = sorted(runs[0].attack_curve)
        attacked = np.mean([[r.attack_curve[e] for e in epsilons] for r in runs], axis=0)
        robustness.plot(epsilons, attacked, marker="o", label=method)
    curves.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
    curves.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    robustness.set(title="Test accuracy under an embedding FGM attack", xlabel="attack epsilon", ylabel="accuracy")
    for axes in (curves, robustness):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(results, config, dataset_name, command=""):
    """Writes results.md / .csv / .json, history.json and ablation.png to `config.out`.

    Returns:
        The Markdown table.
    """
    os.makedirs(config.out, exist_ok=True)
    summary = summarize(results)
    table = markdown_table(summary, config, dataset_name)
    with open(os.path.join(config.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"# Ablation\n\n{table}\n\n")
        f.write(f"{len(results)} runs; scores on the test split, mean ± std over seeds.\n")
        if command:
            f.write(f"\nCommand: `{command}`\n")
    with open(os.path.join(config.out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "seed", "memory_kind", *SCORES])
        writer.writeheader()
        for r in results:
            writer.writerow({k: getattr(r, k) for k in writer.fieldnames})
    config_json = dataclasses.asdict(config)
    with open(os.path.join(config.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"config": config_json, "dataset": dataset_name, "summary": summary,
                   "runs": [{k: v for k, v in dataclasses.asdict(r).items() if k != "history"} for r in results]},
                  f, indent=2, ensure_ascii=False, default=str)
    with open(os.path.join(config.out, "history.json"), "w", encoding="utf-8") as f:
        json.dump([{"method": r.method, "seed": r.seed, "history": r.history} for r in results], f, indent=2)
    _figure(results, os.path.join(config.out, "ablation.png"))
    return table
