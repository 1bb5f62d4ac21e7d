"""The examples run end to end."""

import re
import subprocess
import sys


def test_keras3_text_classifier_runs_end_to_end():
    result = subprocess.run(
        [sys.executable, "examples/keras3_text_classifier.py", "--limit", "600", "--epochs", "1", "--method", "pgd"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"adversarial_loss: \d\.\d+ - loss: \d\.\d+", out)
    accuracies = [float(a) for a in re.findall(r"epsilon [\d.]+: (\d\.\d+)", out)]
    assert len(accuracies) == 3 and all(0.0 <= a <= 1.0 for a in accuracies)
    assert "SavedModel export serves the same predictions: True" in out
