"""Keras 3's own `fit` fails under MultiWorkerMirroredStrategy (upstream), so
the one line refuses it at the call, naming what works instead."""

import subprocess
import sys

from tests.multi_worker import ROOT

# A strategy of its own: collective ops are configured once per process.
REFUSED = """
import keras, tensorflow as tf
import keras_adv
from tests.models import compile_sgd, linear_text_model
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = compile_sgd(linear_text_model())
try:
    keras_adv.adversarial_training(model, "emb", 0.5)
except NotImplementedError as e:
    print("refused:", e)
"""


def test_multi_worker_strategy_is_refused_with_what_works_instead():
    out = subprocess.run(
        [sys.executable, "-c", REFUSED], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    refusal = out.stdout.strip().splitlines()[-1]
    assert refusal.startswith("refused: Keras 3's own `fit` fails under")
    assert "upstream" in refusal and "tf-keras" in refusal and "MirroredStrategy" in refusal
