"""The ablation's outputs: the tables (Markdown, CSV, JSON), the per-epoch
history and the figures, written to the output folder.

The Markdown report has three tables: plain and the configurations chosen on
validation, scored on the test split (mean ± std over seeds); their paired
difference to plain on the same seeds, with a 95% t interval; and the whole
sweep on the validation split, which is what the choice was made on, with
the epsilons that the sweep grew by. Where no configuration of a method beat
plain on validation, the report recommends plain for it.

The costs are measured in `runner`; `MEASURES` says what each one is, and
goes beside the test table and into results.json.
"""

import csv
import dataclasses
import json
import math
import os

from keras_adv.ablation import figures, semi_supervised, stats
from keras_adv.ablation.config import EXTENSION_FACTOR

__all__ = ["summarize", "differences", "markdown_report", "write_report", "SCORES", "COSTS", "MEASURES"]

SCORES = ("precision", "recall", "macro_f1", "accuracy", "attacked_accuracy")
COSTS = ("peak_memory_mib", "train_seconds", "first_step_seconds")
# What each cost measures, in the words of the report and of results.json.
MEASURES = {
    "peak_memory_mib": "GPU memory where TensorFlow uses a GPU, else the process's peak resident memory, "
                       "during training",
    "train_seconds": "the summed wall time of each run's training steps after its first (steady-state "
                     "training, the same steps for every configuration; validation not included)",
    "first_step_seconds": "the wall time of each run's first training step, which also traces and compiles "
                          "the train function (one-time work, kept out of the train time)",
}
CONFIDENCE = 0.95


def summarize(runs, specs, split):
    """Mean and standard deviation over seeds of the costs and of the scores on `split`.

    Args:
        runs: `runner.RunResult`s.
        specs: The configurations to summarise, in order.
        split: `"validation"` or `"test"`.

    Returns:
        One dict per configuration with `method`, `family`, `epsilon`,
        `seeds`, `memory_kind`, and `<name>` and `<name>_std` for each cost
        and score (std NaN with one seed).
    """
    summary = []
    for spec in specs:
        selected = [r for r in runs if r.spec == spec]
        row = {
            "method": spec.label, "family": spec.family,
            "epsilon": None if spec.name == "plain" else spec.epsilon,
            "seeds": len(selected), "memory_kind": selected[0].memory_kind,
        }
        for name in COSTS:
            row[name], row[name + "_std"] = stats.mean_std([getattr(r, name) for r in selected])
        for name in SCORES:
            row[name], row[name + "_std"] = stats.mean_std([getattr(getattr(r, split), name) for r in selected])
        summary.append(row)
    return summary


def differences(ablation, confidence=CONFIDENCE):
    """Test-split difference of each chosen configuration to plain, paired by seed.

    Returns:
        `{label: {score: stats.PairedDifference}}` for macro-F1, accuracy and
        accuracy under attack; empty without a tested plain run.
    """
    plain = {r.seed: r.test for r in ablation.runs if r.spec.name == "plain" and r.test is not None}
    result = {}
    for spec in (ablation.chosen or {}).values():
        runs = sorted((r for r in ablation.runs if r.spec == spec and r.seed in plain), key=lambda r: r.seed)
        if not runs:
            continue
        result[spec.label] = {
            name: stats.paired_difference(
                [getattr(r.test, name) for r in runs], [getattr(plain[r.seed], name) for r in runs],
                confidence=confidence,
            )
            for name in ("macro_f1", "accuracy", "attacked_accuracy")
        }
    return result


def _mean_std(row, name, scale=1.0, digits=1):
    text = f"{row[name] * scale:.{digits}f}"
    std = row[name + "_std"]
    return text if math.isnan(std) else f"{text} ± {std * scale:.{digits}f}"


def _difference(difference):
    # Percentage points, signed, as the scores are in percent.
    text = f"{100 * difference.mean:+.1f}"
    if not difference.defined:
        return f"{text} (no interval: 1 seed)"
    return f"{text} [{100 * difference.low:+.1f}, {100 * difference.high:+.1f}]"


def _test_table(summary, config, dataset_name):
    memory = f"peak {summary[0]['memory_kind']} mem (MiB)"
    lines = [
        f"| task | dataset | method | {memory} | train time (s) | first step (s) | precision (%) "
        f"| recall (%) | macro-F1 (%) | acc. under attack eps={config.attack_epsilon:g} (%) |",
        "|" + " --- |" * 10,
    ]
    for row in summary:
        lines.append(
            f"| text classification ({config.model}) | {dataset_name} | {row['method']} "
            f"| {_mean_std(row, 'peak_memory_mib', digits=0)} | {_mean_std(row, 'train_seconds')} "
            f"| {_mean_std(row, 'first_step_seconds')} | {_mean_std(row, 'precision', 100)} "
            f"| {_mean_std(row, 'recall', 100)} | {_mean_std(row, 'macro_f1', 100)} "
            f"| {_mean_std(row, 'attacked_accuracy', 100)} |"
        )
    return "\n".join(lines)


def _timing_note():
    # The table compares methods by their train time; say which time it is.
    return (f"Train time (s): {MEASURES['train_seconds']}. "
            f"First step (s): {MEASURES['first_step_seconds']}.")


def _difference_table(found, config):
    lines = [
        f"| method | Δ macro-F1 (pp) | Δ accuracy (pp) | Δ acc. under attack eps={config.attack_epsilon:g} (pp) |",
        "|" + " --- |" * 4,
    ]
    for label, scores in found.items():
        lines.append(
            f"| {label} | {_difference(scores['macro_f1'])} | {_difference(scores['accuracy'])} "
            f"| {_difference(scores['attacked_accuracy'])} |"
        )
    return "\n".join(lines)


def sweep_order(runs):
    """The configurations of `runs` as the sweep table lists them: plain,
    then each method (and mode) in the order first trained, by epsilon."""
    specs = list(dict.fromkeys(r.spec for r in runs))
    families = list(dict.fromkeys(s.family for s in specs))
    return sorted(specs, key=lambda s: (s.name != "plain", families.index(s.family), s.epsilon))


def _sweep_mark(row, chosen, extended, recommended):
    if row["epsilon"] is None:
        return "baseline"
    marks = []
    if row["method"] in chosen:
        marks.append("**chosen**" + (" (plain recommended)" if row["family"] in recommended else ""))
    if row["method"] in extended:
        marks.append("grown past the grid")
    return "; ".join(marks)


def _sweep_table(summary, ablation, config):
    chosen = set(spec.label for spec in (ablation.chosen or {}).values())
    extended = set(spec.label for spec in ablation.planned) - set(s.label for s in config.configurations)
    recommended = set(ablation.plain_recommended)
    lines = [
        f"| method | training epsilon | seeds | macro-F1 (%) | acc. under attack eps={config.attack_epsilon:g} (%) | |",
        "|" + " --- |" * 6,
    ]
    for row in summary:
        epsilon = "–" if row["epsilon"] is None else f"{row['epsilon']:g}"
        mark = _sweep_mark(row, chosen, extended, recommended)
        lines.append(
            f"| {row['family']} | {epsilon} | {row['seeds']} | {_mean_std(row, 'macro_f1', 100)} "
            f"| {_mean_std(row, 'attacked_accuracy', 100)} | {mark} |"
        )
    return "\n".join(lines)


def _plain_recommended_note(ablation):
    """One line per method (and mode) that no size made better than plain."""
    plain = [r.validation.macro_f1 for r in ablation.runs if r.spec.name == "plain"]
    return "\n".join(
        f"**Plain recommended for {family}**: none of its sizes beat plain's mean validation "
        f"macro-F1 ({100 * stats.mean_std(plain)[0]:.1f}%), so the chosen one below is its best, "
        f"not an improvement."
        for family in ablation.plain_recommended
    )


def semi_supervised_note(config):
    """What the semi-supervised mode trains on, for the report's head."""
    fraction = config.labeled_fraction
    label_free = ", ".join(semi_supervised.LABEL_FREE)
    return (
        f"Semi-supervised: {fraction:.0%} of the training split keeps its labels. {label_free} "
        f"also trains on the rest, unlabelled, in the same batches (label 0, sample weight 0; "
        f"a labelled row weighs len(train) / len(labelled)); plain and every other method train "
        f"on the labelled rows alone, repeated to the split's length (as many steps, each "
        f"labelled row as often). Validation and test keep every label."
    )


def markdown_report(ablation, config, dataset_name):
    """The report's tables as Markdown (also what the command line prints).

    Before the sweep has finished (or when it was interrupted) only the
    sweep's validation table is there: nothing has been chosen, and the test
    split has not been read.
    """
    runs = ablation.runs
    seeds = len({r.seed for r in runs})
    sweep = _sweep_table(summarize(runs, sweep_order(runs), "validation"), ablation, config)
    tested = [s for s in ablation.tested if any(r.spec == s and r.test is not None for r in runs)]
    head = [semi_supervised_note(config)] if config.labeled_fraction < 1 else []
    if not tested:
        total = config.seeds * len(ablation.planned or config.configurations)
        return "\n\n".join(head + [
            f"The sweep so far ({len(runs)} of {total} runs), on the validation split. Nothing "
            f"is chosen and the test split is not read until every run has finished.\n\n{sweep}"
        ])
    tested_runs = [r for r in runs if r.test is not None]
    parts = head + [
        f"Plain and the configurations chosen on validation, on the test split "
        f"(mean ± std over {seeds} seed{'s' if seeds > 1 else ''}):",
        _test_table(summarize(tested_runs, tested, "test"), config, dataset_name),
        _timing_note(),
    ]
    found = differences(ablation)
    if found:
        level = f"{CONFIDENCE:.0%}"
        if seeds > 1:
            note = f"mean over {seeds} seeds [{level} t interval]"
        else:
            note = f"one seed, so no {level} interval is defined"
        parts += [f"Paired difference to plain on the test split, same seeds ({note}):",
                  _difference_table(found, config)]
    if ablation.plain_recommended:
        parts.append(_plain_recommended_note(ablation))
    parts += [
        "The sweep on the validation split: for each method (and mode) the training epsilon "
        "with the best mean macro-F1 is chosen (ties: the smaller epsilon). While the best sat "
        f"at an edge of a sweep, the sweep grew past it by a factor of {EXTENSION_FACTOR:g}, at "
        f"most {config.max_extensions} times.",
        sweep,
    ]
    return "\n\n".join(parts)


def _csv_rows(runs):
    for r in runs:
        row = {"method": r.method, "family": r.spec.family,
               "epsilon": "" if r.spec.name == "plain" else r.spec.epsilon, "seed": r.seed,
               "memory_kind": r.memory_kind, "peak_memory_mib": r.peak_memory_mib,
               "train_seconds": r.train_seconds, "first_step_seconds": r.first_step_seconds}
        for split in ("validation", "test"):
            scores = getattr(r, split)
            for name in SCORES:
                row[f"{split}_{name}"] = "" if scores is None else getattr(scores, name)
        yield row


def _run_record(run):
    """A run for results.json: its costs and scores. The per-epoch history
    and the per-step times go to history.json."""
    record = {k: v for k, v in dataclasses.asdict(run).items() if k not in ("history", "step_seconds")}
    record.update({name: getattr(run, name) for name in COSTS})
    return record


def _without_nan(value):
    # JSON has no NaN: an undefined std or interval is written as null.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    return value


def write_report(ablation, config, dataset_name, command=""):
    """Writes results.md / .csv / .json, history.json and the figures to `config.out`.

    `sweep.png` is written from the validation scores; `ablation.png` once
    the chosen configurations have their test scores.

    Returns:
        The Markdown report.
    """
    os.makedirs(config.out, exist_ok=True)
    text = markdown_report(ablation, config, dataset_name)
    with open(os.path.join(config.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"# Ablation\n\n{dataset_name}, {config.model}, {config.epochs} epochs per run.\n\n{text}\n")
        if command:
            f.write(f"\nCommand: `{command}`\n")
    fields = ["method", "family", "epsilon", "seed", "memory_kind", *COSTS,
              *(f"{split}_{name}" for split in ("validation", "test") for name in SCORES)]
    with open(os.path.join(config.out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(_csv_rows(ablation.runs))
    specs = sweep_order(ablation.runs)
    tested_runs = [r for r in ablation.runs if r.test is not None]
    tested = [s for s in ablation.tested if any(r.spec == s for r in tested_runs)]
    with open(os.path.join(config.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(_without_nan({
            "config": dataclasses.asdict(config),
            "dataset": dataset_name,
            "measures": MEASURES,
            "chosen": None if ablation.chosen is None else {k: v.label for k, v in ablation.chosen.items()},
            "plain_recommended": list(ablation.plain_recommended),
            "grown_past_the_grid": [s.label for s in ablation.planned if s not in config.configurations],
            "test": summarize(tested_runs, tested, "test"),
            "differences_to_plain": {label: {k: dataclasses.asdict(v) for k, v in scores.items()}
                                     for label, scores in differences(ablation).items()},
            "validation": summarize(ablation.runs, specs, "validation"),
            "runs": [_run_record(r) for r in ablation.runs],
        }), f, indent=2, ensure_ascii=False, default=str)
    with open(os.path.join(config.out, "history.json"), "w", encoding="utf-8") as f:
        json.dump([{"method": r.method, "seed": r.seed, "history": r.history, "step_seconds": r.step_seconds}
                   for r in ablation.runs], f, indent=2)
    figures.sweep_figure(ablation, config.attack_epsilon, os.path.join(config.out, "sweep.png"))
    if tested:
        figures.training_figure(ablation, os.path.join(config.out, "ablation.png"))
    return text
