"""The ablation runner with its bert4keras model (tf-keras process)."""

import numpy as np

from keras_adv.ablation import runner
from keras_adv.ablation.config import make_config


def test_bert4keras_bert_runs(tmp_path):
    config = make_config(dict(
        model="bert4keras-bert", seeds=1, epochs=1, train_limit=64, eval_limit=32,
        max_length=32, methods=["plain", {"name": "pgd", "epsilon": 0.5, "steps": 2}],
        attack_epsilons=[0.0, 0.5], attack_epsilon=0.5, out=str(tmp_path),
    ))
    ablation = runner.run_ablation(config, progress=False)
    assert [r.method for r in ablation.runs] == ["plain", "pgd eps=0.5 K=2 alpha=0.3"]
    # Both are scored on test, from weights loaded into a rebuilt bert4keras model.
    assert [s.label for s in ablation.tested] == ["plain", "pgd eps=0.5 K=2 alpha=0.3"]
    for result in ablation.runs:
        for scores in (result.validation, result.test):
            assert 0 <= scores.macro_f1 <= 1 and 0 <= scores.attacked_accuracy <= 1
        assert np.isfinite(result.train_seconds) and result.peak_memory_mib > 100
    assert "adversarial_loss" in ablation.runs[1].history
