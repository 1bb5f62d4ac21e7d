"""How peak memory is measured: two measures, each as a ratio to the plain step's.

- Live tensors: the model's and optimizer's variables plus the most bytes
  that the step's own tensors hold at once, as requested from the allocator
  (`traced_peak_bytes`): what the step needs; it repeats to about 1 MiB.
- Allocator peak: what the allocator counts as in use at its peak, the median
  over `--steps` steps (`allocator_peak_mib`); it also holds the unused rest
  of chunks handed out whole, so it moves with where the free space lay.

Both are taken side by side in one process, in `MEMORY_PROCESSES` processes
(the plain step's own peak moves from process to process); the report gives
the median of their ratios. The readings themselves are the backend's.
"""

import statistics

from benchmarks.step_cost import processes, variants
from benchmarks.step_cost.variants import RECIPE_HOST

MEMORY_PROCESSES = 3
TRACED_STEPS = 3
# The two measures of peak memory.
LIVE, ALLOCATOR = "live tensors", "allocator"
# What a method holds beyond a plain step's tensors: under `objective="sum"`,
# the clean gradient of every weight as the tape returns it (a lookup's, token
# or segment, one row per token) through the adversarial pass.
# (`"adversarial"` holds nothing more: the perturbation enters at the lookups,
# and no original rows are kept to restore.)
CLEAN_GRADIENTS = "clean gradients"


def measure_stack(backend, stack, steps, model_names, xla=False):
    """In a stack's process: `{"device": ..., model: {measure: {variant: MiB},
    CLEAN_GRADIENTS: MiB}}`: each variant's peak by each measure that the
    backend takes on this device (`memory_measures`), and what a method holds
    beyond a plain step (`CLEAN_GRADIENTS`)."""
    device = backend.device()
    jit = backend.jit_compile(device, xla)
    results = {"device": device}
    measured = backend.memory_measures(device)
    for model_name in model_names:
        model, _, data, functions = variants.ready(backend, stack, model_name, jit)
        results[model_name] = {CLEAN_GRADIENTS: backend.clean_gradients_mib(model, data)}
        if ALLOCATOR in measured:
            results[model_name][ALLOCATOR] = _allocator_peaks(backend, functions, f"{device}:0", steps)
        if LIVE in measured:
            results[model_name][LIVE] = _live_tensor_peaks(
                backend, functions, _variables_mib(model), f"{device}:0"
            )
    return results


def across_processes(backend, stack, *args, model="bert-like"):
    """Model `model`'s variants' peak memory by both measures, median over
    `MEMORY_PROCESSES` processes: `{measure: {"MiB": {name: peak},
    "x plain": {name: peak / plain peak}}}`, each ratio the median of ratios
    measured side by side in one process; and the MiB of what the methods
    hold beyond a plain step (`CLEAN_GRADIENTS`)."""
    runs = [processes.child(backend, "--stack", stack, *args, "--models", model, "--memory",
                            env=backend.MEMORY_ENV)[model] for _ in range(MEMORY_PROCESSES)]
    memory = {CLEAN_GRADIENTS: statistics.median(run[CLEAN_GRADIENTS] for run in runs)}
    for measure in [measure for measure in (LIVE, ALLOCATOR) if measure in runs[0]]:
        peaks = [run[measure] for run in runs]
        memory[measure] = {
            "MiB": {name: statistics.median(p[name] for p in peaks) for name in peaks[0]},
            "x plain": {name: statistics.median(p[name] / p["plain"] for p in peaks) for name in peaks[0]},
        }
    return memory


def _allocator_peaks(backend, functions, device, steps):
    """Each variant's allocator peak, the median over `steps` steps, in MiB.

    The peak of what the allocator counts as in use: whole free chunks
    where it did not split one (it splits a chunk only when it is at least
    twice the request), so it depends on how the free space happened to lie.
    """
    return _median_peaks(functions, steps, lambda call: backend.allocator_peak_mib(call, device))


def _live_tensor_peaks(backend, functions, variables_mib, device):
    """Each variant's memory as its tensors need it, in MiB: the model's and
    optimizer's variables plus the most that the step's own tensors hold at
    once (the median of `TRACED_STEPS` traced steps, which agree to about
    1 MiB: unlike the allocator's peak, it does not depend on where the free
    space lies)."""
    return _median_peaks(
        functions, TRACED_STEPS, lambda call: variables_mib + backend.traced_peak_bytes(call, device) / 2**20
    )


def _median_peaks(functions, rounds, peak):
    """`{variant: median of peak(call)}` over `rounds` rounds, every round
    measuring each variant once, in turn, like the timings."""
    # The published recipe's copies live in numpy, outside the allocator.
    peaks = {name: [] for name in functions if name != RECIPE_HOST}
    for _ in range(rounds):
        for name in peaks:
            peaks[name].append(peak(functions[name]))
    return {name: statistics.median(p) for name, p in peaks.items()}


def _variables_mib(model):
    """The model's and its optimizer's variables (weights and slots), in MiB."""
    optimizer_variables = model.optimizer.variables
    if callable(optimizer_variables):  # tf-keras's optimizers.
        optimizer_variables = optimizer_variables()
    return sum(v.numpy().nbytes for v in [*model.variables, *optimizer_variables]) / 2**20
