"""The report: runs each stack's processes, and writes their tables to BENCHMARKS.md.

Per stack: each model's table (time, against plain and against the floor,
and for the BERT-like model peak memory), the memory floors, what grows with
the vocabulary, and on a CPU-only machine the BERT-like model XLA-compiled
and the MirroredStrategy section.
"""

import os
import platform

from benchmarks.step_cost import memory, processes
from benchmarks.step_cost.memory import ALLOCATOR, CLEAN_GRADIENTS, LIVE, MEMORY_PROCESSES
from benchmarks.step_cost.models import GEMMA_LIKE, MIRRORED_MODELS, MODELS
from benchmarks.step_cost.variants import METHODS, MIRRORED_VARIANTS, RECIPE_GRAPH, RECIPE_HOST, floors

# The models whose peak memory is measured too.
MEMORY_MODELS = ("bert-like", GEMMA_LIKE)
# The models whose times are compared as the vocabulary grows, and the title of each comparison.
VOCABULARY_GROWTH = [
    ("bert-like", "bert-like, vocab 250000",
     "Vocabulary 21128 -> 250000 (the plain step itself grows: Adam updates the whole matrix):"),
    ("bert-like, frozen embedding", "bert-like, frozen embedding, vocab 250000",
     "Vocabulary 21128 -> 250000 with the embedding frozen (nothing in the plain step grows):"),
]


def write(backend, steps, out, model_names=tuple(MODELS)):
    """Measures every stack of `backend` with `steps` timed steps on
    `model_names` (each section needs its models), prints the report, and
    writes it to `out`."""
    timed = ("--steps", str(steps))
    chosen = ("--models", *model_names)
    lines = ["# Benchmarks", "",
             f"Command: `python -m benchmarks.step_cost --backend {backend.NAME} --steps {steps}`", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}.", "",
             f"Peak memory, the median over {MEMORY_PROCESSES} processes of the ratio to the plain step measured "
             f"side by side in each. {backend.MEMORY_MEASURES}", ""]
    for stack, title in backend.STACKS.items():
        results = processes.child(backend, "--stack", stack, *timed, *chosen)
        if not any(model_name in results for model_name in MODELS):  # None of them runs on this stack.
            continue
        gpu = results["device"] == "GPU"
        lines += [f"## {title}", "", backend.describe_device(results["device"]), ""]
        # Only the measures this backend can take on this device (none: no table column is filled).
        measured = backend.memory_measures(results["device"])
        for model_name in MODELS:
            if model_name not in results:
                continue
            peaks = None
            if measured and model_name in MEMORY_MODELS:
                peaks = memory.across_processes(backend, stack, *timed, model=model_name)
            lines += [f"### {model_name}: " + ", ".join(f"{k} {v}" for k, v in MODELS[model_name].items()), "",
                      _table(results[model_name], peaks), ""]
            if peaks and LIVE in peaks:
                lines += [_memory_floors(peaks), ""]
        for small, big, growth_title in VOCABULARY_GROWTH:
            if small in results and big in results:
                lines += [_vocabulary_growth(results[small], results[big], growth_title), ""]
        # Where the CPU's default step is not XLA but a GPU's is (TensorFlow;
        # JAX's step is XLA everywhere, PyTorch's nowhere).
        if not gpu and backend.jit_compile("CPU", True) != backend.jit_compile("CPU", False) \
                and "bert-like" in model_names:
            # The path a GPU takes by default, on this CPU: its own step (one
            # program, its own memory planning), though not a GPU's timings.
            only = ("--models", "bert-like", "--xla")
            xla = processes.child(backend, "--stack", stack, *timed, *only)["bert-like"]
            xla_peaks = memory.across_processes(backend, stack, *timed, "--xla") if measured else None
            lines += ["### bert-like, XLA-compiled on this CPU (`jit_compile=True`, a GPU's default)", "",
                      _table(xla, xla_peaks), ""]
            if xla_peaks and LIVE in xla_peaks:
                lines += [_memory_floors(xla_peaks), ""]
        if not gpu and backend.mirrored_strategy is not None and set(MIRRORED_MODELS) <= set(model_names):
            lines += _mirrored_section(backend, stack, timed)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def print_mirrored(backend, steps):
    """Prints, for every stack of `backend`, only the MirroredStrategy section."""
    if backend.mirrored_strategy is None:
        raise SystemExit(f"--mirrored: the {backend.NAME} backend has no MirroredStrategy (TensorFlow only).")
    for stack, title in backend.STACKS.items():
        print("\n".join([f"## {title}", "", *_mirrored_section(backend, stack, ("--steps", str(steps)))]))


def _table(times, peaks=None):
    plain = times["plain"]
    floor = floors(times)
    rows = ["| pass / method | ms | x plain step | floor (x plain) | x its floor "
            "| peak memory vs plain: live tensors | allocator peak |",
            "| --- | --- | --- | --- | --- | --- | --- |"]

    def peak(measure, name):
        if not peaks or measure not in peaks or name not in peaks[measure]["MiB"]:
            return ""
        return f"{peaks[measure]['x plain'][name]:.3f} ({peaks[measure]['MiB'][name]:.0f} MiB)"

    for name, seconds in times.items():
        ratio = seconds / plain
        floor_text = f"{floor[name]:.2f}" if name in floor else ""
        of_floor = f"{ratio / floor[name]:.3f}" if name in floor else ""
        rows.append(f"| {name} | {seconds * 1000:.1f} | {ratio:.2f} | {floor_text} | {of_floor} "
                    f"| {peak(LIVE, name)} | {peak(ALLOCATOR, name)} |")
    if "fgm adversarial" in times:
        for recipe in [recipe for recipe in (RECIPE_HOST, RECIPE_GRAPH) if recipe in times]:
            rows.append(f"\nSpeed-up of FGM (objective=\"adversarial\", the recipe's update) over the "
                        f"{recipe}: {times[recipe] / times['fgm adversarial']:.2f}x")
    return "\n".join(rows)


def _vocabulary_growth(small, big, title):
    def added(times, name):
        return (times[name] - times["plain"]) * 1000

    ratio_small, ratio_big = small["fgm sum"] / small["plain"], big["fgm sum"] / big["plain"]
    rows = [
        title,
        "",
        "| | vocab 21128 | vocab 250000 | 250000 / 21128 |",
        "| --- | --- | --- | --- |",
        f"| plain step, ms | {small['plain'] * 1000:.1f} | {big['plain'] * 1000:.1f} | "
        f"{big['plain'] / small['plain']:.3f} |",
        f"| FGM (sum) / plain | {ratio_small:.3f} | {ratio_big:.3f} | {ratio_big / ratio_small:.3f} |",
        f"| FGM (sum) added to the plain step, ms | {added(small, 'fgm sum'):.1f} | "
        f"{added(big, 'fgm sum'):.1f} | {added(big, 'fgm sum') / added(small, 'fgm sum'):.3f} |",
    ]
    if RECIPE_HOST in small and RECIPE_HOST in big:
        rows.append(
            f"| published recipe (host copies) added, ms | {added(small, RECIPE_HOST):.1f} | "
            f"{added(big, RECIPE_HOST):.1f} | {added(big, RECIPE_HOST) / added(small, RECIPE_HOST):.3f} |"
        )
    return "\n".join(rows)


def _mirrored_table(results):
    rows = ["| model | method | one device: x plain | mirrored, 2 replicas: x plain | mirrored / one device |",
            "| --- | --- | --- | --- | --- |"]
    for model_name, by_setting in results.items():
        single, mirrored = by_setting["single device"], by_setting["mirrored"]
        for name in MIRRORED_VARIANTS[1:]:
            one, two = single[name] / single["plain"], mirrored[name] / mirrored["plain"]
            rows.append(f"| {model_name} | {name} | {one:.2f} | {two:.2f} | {two / one:.3f} |")
    return "\n".join(rows)


def _mirrored_section(backend, stack, timed):
    results = processes.child(backend, "--stack", stack, *timed, "--mirrored", "--models", *MIRRORED_MODELS)
    return ["### MirroredStrategy over 2 logical CPU devices", "",
            "Each method's step against the plain step, on one device and under MirroredStrategy "
            "(global batch as above, split across the replicas), timed side by side in one process. "
            "Under the strategy the perturbation is built from the global batch's gradient: the "
            "replicas all-gather their token ids and all-reduce the touched rows' gradient.", "",
            _mirrored_table(results), ""]


def _memory_floors(peaks):
    """The memory floor of each objective from what it must hold beyond a
    plain step, and each method's live-tensor peak over its floor."""
    clean, plain = peaks[CLEAN_GRADIENTS], peaks[LIVE]["MiB"]["plain"]
    floor = {"adversarial": 1.0, "sum": 1 + clean / plain}
    # NEFTune's one pass holds what a plain step holds; R-Drop's two passes,
    # differentiated together, hold both passes' activations (no floor here).
    over = ", ".join(
        f"{name} {peaks[LIVE]['x plain'][name] / (1.0 if name.startswith('neftune') else floor[name.split()[1]]):.3f}"
        for name in METHODS if name in peaks[LIVE]["x plain"] and not name.startswith("rdrop"))
    return (f"Memory floors (live tensors): `objective=\"adversarial\"` holds nothing beyond a plain "
            f"step (the perturbation enters at the lookups; no rows are kept to restore): 1.000 x plain; "
            f"`objective=\"sum\"` holds the clean gradients through the adversarial pass, {clean:.1f} MiB: "
            f"{floor['sum']:.3f} x plain. Peak over its floor: {over}.")
