"""How steps are timed: each variant's median step, interleaved round by round.

Every round times each variant of each model once, in turn, so that every
variant sees the same machine state; the result is each variant's median
over `--steps` rounds. What a variant's step is, is `variants.py`'s; how it
is made on a backend, `step_functions` in `backends/<name>.py`.
"""

import contextlib
import statistics
import time

from benchmarks.step_cost import models, variants
from benchmarks.step_cost.variants import RECIPE_HOST


def time_stack(backend, stack, steps, model_names, xla=False):
    """In a stack's process: `{"device": "GPU" or "CPU", model: {variant:
    median seconds}}`, the models of one `models.TIMED_TOGETHER` group timed
    side by side."""
    device = backend.device()
    jit = backend.jit_compile(device, xla)
    results = {"device": device}
    groups = [[name for name in together if name in model_names and models.runs_on(stack, name)]
              for together in models.TIMED_TOGETHER]
    for group in groups:
        functions = {}
        for model_name in group:
            *_, functions[model_name] = variants.ready(backend, stack, model_name, jit)
        if functions:
            results.update(_timings(functions, steps))
            for model_name in group:
                print(f"[{stack}] {model_name}: " + ", ".join(
                    f"{n} {t * 1000:.1f} ms" for n, t in results[model_name].items()), flush=True)
    return results


def time_mirrored(backend, stack, steps, model_names):
    """`{model: {"single device": {variant: s}, "mirrored": {variant: s}}}`:
    each variant timed on one device and under MirroredStrategy over two
    logical CPU devices, side by side, round by round, in one process."""
    strategy = backend.mirrored_strategy()
    results = {}
    for model_name in model_names:
        functions = {}
        for setting, distribution in (("single device", None), ("mirrored", strategy)):
            with distribution.scope() if distribution else contextlib.nullcontext():
                model, embedding_name, data = models.build(stack, models.MODELS[model_name], jit=False)
                # Built in the scope, as `fit` builds it there, before any step is traced.
                model.optimizer.build(model.trainable_variables)
            functions[setting] = variants.warmed_up(backend.step_functions(
                stack, model, embedding_name, data, variants.MIRRORED_VARIANTS, strategy=distribution
            ))
        results[model_name] = _timings(functions, steps)
        print(f"[{stack}] {model_name}: " + "; ".join(
            f"{setting}: " + ", ".join(f"{n} {t * 1000:.1f} ms" for n, t in times.items())
            for setting, times in results[model_name].items()), flush=True)
    return results


def _timings(functions, steps):
    """`{model: {variant: median seconds}}` over `steps` rounds, every round
    timing each variant of each model once, in turn, the models' order
    alternating from round to round: every variant sees the same machine
    state. Except the published recipe with host copies, timed after the
    others in the same way: its numpy copies of the matrix (four per step,
    256 MB each at vocabulary 250000) slow down whatever runs next."""
    samples = {model: {name: [] for name in names} for model, names in functions.items()}
    for timed_last in (False, True):
        for round_ in range(steps):
            for model in list(functions) if round_ % 2 == 0 else list(functions)[::-1]:
                for name in [name for name in functions[model] if (name == RECIPE_HOST) == timed_last]:
                    start = time.perf_counter()
                    functions[model][name]()
                    samples[model][name].append(time.perf_counter() - start)
    return {model: {name: statistics.median(s) for name, s in by_name.items()} for model, by_name in samples.items()}
