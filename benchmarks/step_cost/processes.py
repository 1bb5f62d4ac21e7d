"""Running one stack's measures in a child process, and reading its results.

Each stack runs in fresh processes of its own: tf-keras's flags are set
before TensorFlow loads, the memory measures choose the allocator before it
loads (`MEMORY_ENV`), and `--mirrored` splits the CPU into logical devices
before TensorFlow initialises them. A child is this same command with
`--stack`; it prints progress lines that start with "[" and, last, its
results as one line of JSON.
"""

import json
import os
import subprocess
import sys

from benchmarks.step_cost import ROOT


def child(backend, *args, env=None):
    """Runs the benchmark with `args` on `backend` in a child process.

    Once it ends, its progress lines are copied to stderr.

    Returns:
        The child's results, parsed from its last line of output.

    Raises:
        SystemExit: If the child failed, with the end of its stderr.
    """
    out = subprocess.run(
        [sys.executable, "-m", __package__, "--backend", backend.NAME, *args], cwd=ROOT,
        capture_output=True, text=True, check=False,
        env={**os.environ, "KERAS_BACKEND": backend.NAME, **(env or {})},
    )
    if out.returncode != 0:
        raise SystemExit(f"benchmark child {args} failed:\n{out.stderr[-3000:]}")
    sys.stderr.write("".join(line + "\n" for line in out.stdout.splitlines() if line.startswith("[")))
    return json.loads(out.stdout.strip().splitlines()[-1])
