"""The bert4keras example runs end to end, as a script (both modes) and as a notebook."""

import os
import re
import subprocess
import sys

import nbclient
import nbformat
import pytest

from tests.tf_keras.test_prepare_bert4keras import CLEAN_ENV

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples")


@pytest.mark.parametrize("mode", [[], ["--graph", "--method", "pgd"]])
def test_script_runs_end_to_end(tmp_path, mode):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "bert4keras_classification.py"),
         "--limit", "300", "--epochs", "1", "--maxlen", "32", "--out", str(tmp_path), *mode],
        env=CLEAN_ENV, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"test accuracy: 0\.\d+", result.stdout)
    assert "export serves the same predictions: True" in result.stdout
    history = result.stdout.split("history:", 1)[1].splitlines()[0]
    assert ("adversarial_loss" in history) == (mode == [])  # Graph mode: clean loss only.
    assert os.path.exists(tmp_path / "vocab.txt")


def test_notebook_executes(tmp_path):
    notebook = nbformat.read(os.path.join(EXAMPLES, "bert4keras_classification.ipynb"), as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": EXAMPLES}}
    )
    client.execute(env=CLEAN_ENV)
    outputs = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "adversarial_loss" in outputs
    assert "export serves the same predictions" in outputs
