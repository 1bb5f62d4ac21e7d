"""The Python blocks of README.md and docs/*.md that run under
MirroredStrategy (tests/readme.py).

Each runs in a process of its own, over two logical CPUs: a block makes its
own strategy, and two strategies in one process number their collective ops
from the same keys (tests/mirrored.py)."""

import subprocess
import sys
import textwrap

import pytest

from tests import readme
from tests.multi_worker import ROOT

SCRIPT = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tests import readme
    readme.run(readme.blocks_of("mirrored")[int(sys.argv[1])])
    print("README block ran")
    """
)


@pytest.mark.parametrize(
    "index,block", list(enumerate(readme.blocks_of("mirrored"))), ids=lambda item: getattr(item, "name", "")
)
def test_block_runs_as_written(index, block):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(index)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": ROOT, "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 0 and "README block ran" in result.stdout, result.stderr[-4000:]
