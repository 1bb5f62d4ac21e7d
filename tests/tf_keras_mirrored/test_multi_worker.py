"""tf-keras under MultiWorkerMirroredStrategy: two worker processes on
loopback ports give the single-device result (tests/multi_worker.py)."""

import pytest

import keras_adv
from tests import multi_worker
from tests.models import batch, compile_sgd, linear_text_model
from tests.testing import TestCase

GLOBAL_BATCH, STEPS = 8, 2


class TestMultiWorker(TestCase):
    @pytest.mark.parametrize("method,objective", [("fgm", "sum"), ("pgd", "adversarial")])
    def test_two_workers_give_the_single_device_result(self, tmp_path, method, objective):
        workers = multi_worker.train_on_two_workers(
            str(tmp_path), method, objective, GLOBAL_BATCH, STEPS
        )
        self.setup_method(None)
        model = compile_sgd(linear_text_model(), lr=0.5)
        keras_adv.adversarial_training(model, "emb", 0.7, method=method, objective=objective)
        x, y = batch(size=GLOBAL_BATCH * STEPS, seed=3)
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        for weights in workers:
            for actual, want in zip(weights, model.get_weights()):
                self.assertAllClose(actual, want, rtol=1e-5, atol=2e-6)
