"""Cost of an adversarial training step against a plain step and against its floor.

    python -m benchmarks.step_cost            # both stacks, writes BENCHMARKS.md
    python -m benchmarks.step_cost --steps 5  # fewer timed steps (a quick look)
    python -m benchmarks.step_cost --backend jax    # Keras 3 on JAX (or torch):
                                                    # writes BENCHMARKS-jax.md

On JAX and PyTorch only Keras 3 runs (tf-keras is TensorFlow's), every
variant but the published recipe with host copies (TensorFlow's session-era
path); JAX's steps are XLA programs on every device, PyTorch's eager, and
their memory is measured as `backends/jax.py` and `backends/torch.py` say.
What follows describes the TensorFlow run.

Per stack (Keras 3 on TensorFlow; tf-keras eager with a bert4keras model), in
one process per stack and interleaved step by step, it times the median of
`--steps` steps of: the plain step, a pass computing only the embedding
gradient, the gradient penalty's step written by hand with two nested tapes
(the double backward, its floor), FGM and PGD-3 with both objectives, FGM
per example (both objectives), FGSM, FreeLB-3, the gradient penalty, VAT,
AWP with both objectives, and the published Keras recipe
twice: as published (dense gradient copied to the host, the matrix copied
through numpy to add and subtract the perturbation; timed after the others,
whose timings its host copies would disturb) and densely in the graph (no
host copies; a generous baseline). The floor of each method comes from
the two measured passes (DESIGN.md's cost model); the gradient penalty's is
its hand-written step. The BERT-like model also
runs at vocabulary 250000, and both sizes with the embedding frozen (the
plain step then has nothing that grows with the vocabulary), to show what
grows with it; the two sizes compared are timed side by side, round by
round, in the same process.

On a GPU every step is XLA-compiled, as Keras compiles them there by default
(`jit_compile="auto"`). On a CPU-only machine the BERT-like model also runs
XLA-compiled, to show that path's cost on the CPU at hand.

Peak memory, two measures, side by side in one process, each as a ratio to
the plain step's:

- Live tensors: the model's and optimizer's variables plus the most bytes
  that the step's own tensors hold at once, as requested from TensorFlow's
  allocator, replayed from its profiler trace (every allocation and free is
  an event there). It is what the step needs, and it repeats to about 1 MiB
  from step to step (the counterpart of PyTorch's `max_memory_allocated`).
- Allocator peak: what the allocator counts as in use at its peak (weights,
  optimizer slots and the step's own tensors), free-running, the median over
  `--steps` steps. TensorFlow's BFC allocator hands out a free chunk whole
  unless it is at least twice the request, and counts it whole, so this peak
  also holds the unused rest of such chunks, which moves by tens of MiB with
  where the free space happened to lie and how the executor ordered
  independent ops.

Three processes per stack measure both (the plain step's own peak moves from
process to process), and the report gives the median of their ratios. On the
CPU, TensorFlow keeps allocator statistics only with its BFC allocator, which
those processes turn on (`TF_CPU_ALLOCATOR_USE_BFC`); the timing processes
keep the default allocator that users get. Only the BFC allocator's events
are in the profiler trace on every CPU (an AMD machine's trace held none of
the default allocator's), so both measures use it.
"""

# The layout, one job a module (this docstring is also `--help`'s text):
#
#   __main__.py  the command line: the parent writes the report, a child
#                (`--stack`) measures one stack and prints JSON
#   models.py    which models are measured, and building them
#   variants.py  what is timed: the variants of a step, and the methods' floors
#   timing.py    how steps are timed: interleaved, round by round
#   memory.py    how peak memory is measured: live tensors, allocator peak
#   processes.py running a child process and reading its results
#   report.py    the tables and BENCHMARKS.md
#   backends/    what speaks one Keras backend (TensorFlow: step functions,
#                devices, its allocator), one module a backend

import os

# The repository's root: the children run from it (`python -m`), and the
# report and the bert4keras config live there.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
