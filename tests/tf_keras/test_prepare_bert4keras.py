"""`prepare_bert4keras`, each case in a fresh interpreter (it is about start-up)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.bert4keras_models import CONFIG

# The interpreter starts without the flags that this test process has.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("TF_KERAS", "TF_USE_LEGACY_KERAS")}

TRAIN = """
import numpy as np
from bert4keras.backend import keras
from bert4keras.models import build_transformer_model
from bert4keras.optimizers import Adam, extend_with_piecewise_linear_lr, extend_with_gradient_accumulation

results = {"base_restored": tf.keras.optimizers.Optimizer is not tf.keras.optimizers.legacy.Optimizer}
# bert4keras's own Adam, and Adam extended as its examples extend it: a
# piecewise-linear schedule and gradient accumulation, stacked.
AdamLR = extend_with_piecewise_linear_lr(Adam, "AdamLR")
optimizers = {
    "Adam": lambda: Adam(1e-3),
    "AdamLRGA": lambda: extend_with_gradient_accumulation(AdamLR, "AdamLRGA")(
        grad_accum_steps=2, learning_rate=1e-3, lr_schedule={4: 1}),
}
for name, make in optimizers.items():
    bert = build_transformer_model(CONFIG, checkpoint_path=None)
    cls = keras.layers.Lambda(lambda x: x[:, 0])(bert.output)
    model = keras.models.Model(bert.input, keras.layers.Dense(2, activation="softmax")(cls))
    model.compile(loss="sparse_categorical_crossentropy", optimizer=make())
    keras_adv.adversarial_training(model, "Embedding-Token", 0.5)
    before = model.get_weights()
    x = [np.random.RandomState(0).randint(1, 60, (8, 12)).astype("float32"), np.zeros((8, 12), "float32")]
    history = model.fit(x, np.arange(8) % 2, batch_size=4, epochs=2, verbose=0).history
    moved = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), before))
    results[name] = {"loss": history["loss"], "moved": moved}
print("RESULT", json.dumps(results))
"""


def _run(code):
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=CLEAN_ENV, capture_output=True, text=True, timeout=600,
    )
    return result


def test_importing_keras_adv_changes_nothing():
    result = _run(
        """
        import os, sys
        import keras_adv
        assert "TF_KERAS" not in os.environ and "TF_USE_LEGACY_KERAS" not in os.environ
        print("LOADED", sorted(m for m in ("tensorflow", "keras", "tf_keras", "bert4keras") if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout


@pytest.mark.parametrize("graph_mode", [False, True])
def test_bert4keras_optimizers_train_with_adversarial_training(graph_mode):
    result = _run(
        "import json, keras_adv\n"
        "keras_adv.prepare_bert4keras()\n"
        "import tensorflow as tf\n"
        + ("tf.compat.v1.disable_eager_execution()\n" if graph_mode else "")
        + f"CONFIG = {CONFIG!r}\n"
        + TRAIN
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.split("RESULT", 1)[1])
    assert results.pop("base_restored") is True
    assert set(results) == {"Adam", "AdamLRGA"}
    for name, outcome in results.items():
        assert all(0 < loss < 10 for loss in outcome["loss"]), name
        assert outcome["moved"] > 1e-5, name


def test_without_the_helper_bert4keras_optimizers_fail():
    # What the helper is for: bert4keras's Adam on tf-keras 2.21's new base.
    result = _run(
        """
        import os
        os.environ.update(TF_KERAS="1", TF_USE_LEGACY_KERAS="1")
        from bert4keras.optimizers import Adam
        Adam(1e-3)
        """
    )
    assert result.returncode != 0
    assert "_set_hyper" in result.stderr


def test_too_late_is_a_clear_error():
    result = _run(
        """
        import tensorflow, keras_adv
        try:
            keras_adv.prepare_bert4keras()
        except RuntimeError as error:
            print("RuntimeError:", error)
        """
    )
    assert "RuntimeError: Keras 3 is already loaded" in result.stdout
    assert "before importing tensorflow" in result.stdout
