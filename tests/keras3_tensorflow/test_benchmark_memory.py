"""The benchmark's live-tensor measure (`traced_peak_bytes` in
`benchmarks/step_cost/backends/tensorflow.py`) counts exactly the bytes that
a step's tensors hold at once.

The benchmark measures with TensorFlow's BFC allocator, which is chosen
before TensorFlow loads, so the measure runs in a process of its own. (Only
the BFC allocator's events are in the trace on every CPU of this project's
machines: with the default allocator, an AMD machine's trace held none.)
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 2**20

# Two 4 MiB tensors and their 8 MiB concatenation are alive at once: 16 MiB.
# The 1 MiB input, made before the trace, is not the step's.
MEASURE = """
import json
import tensorflow as tf
from benchmarks.step_cost.backends import tensorflow as backend

x = tf.ones([512, 512])

@tf.function
def step(x):
    a = tf.tile(x, [4, 1]) + 1.0
    b = tf.tile(x, [4, 1]) + 2.0
    return tf.reduce_sum(tf.concat([a, b], axis=0))

@tf.function
def one_tensor(x):
    return tf.reduce_sum(tf.tile(x, [4, 1]))

# The 4 MiB tile is freed once summed, before the 1 MiB product and the
# second 4 MiB tile exist: 5 MiB at once, 9 MiB if frees were not counted.
@tf.function
def one_after_another(x):
    total = tf.reduce_sum(tf.tile(x, [4, 1]))
    return tf.reduce_sum(tf.tile(x * total, [4, 1]))

step(x), one_tensor(x), one_after_another(x)  # Traced before the measure.

def error(device):
    try:
        backend.traced_peak_bytes(lambda: step(x), device)
    except RuntimeError as e:
        return str(e)

print(json.dumps({
    "step": [backend.traced_peak_bytes(lambda: step(x), "CPU:0") for _ in range(2)],
    "one tensor": backend.traced_peak_bytes(lambda: one_tensor(x), "CPU:0"),
    "one after another": backend.traced_peak_bytes(lambda: one_after_another(x), "CPU:0"),
    # No GPU here: the trace has none of its allocator's events.
    "wrong device": error("GPU:0"),
}))
"""


def measure():
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true"}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def peaks():
    return measure()


def test_traced_peak_counts_the_tensors_alive_at_once(peaks):
    # Plus at most a few scalars (the sums, the output).
    for peak in peaks["step"]:
        assert 16 * MIB <= peak < 16 * MIB + 4096
    assert 4 * MIB <= peaks["one tensor"] < 4 * MIB + 4096


def test_traced_peak_subtracts_what_the_step_frees(peaks):
    assert 5 * MIB <= peaks["one after another"] < 5 * MIB + 4096


def test_traced_peak_of_an_allocator_absent_from_the_trace_is_an_error(peaks):
    assert "no allocation by an allocator named like 'GPU_0' for GPU:0" in peaks["wrong device"]
    assert "bfc_cpu_allocator_for_gpu" in peaks["wrong device"]  # What the trace does hold.
