"""tf-keras under MultiWorkerMirroredStrategy: two worker processes on
loopback ports give the single-device result, weights and History alike
(tests/multi_worker.py)."""

import pytest

import keras_adv
from tests import multi_worker
from tests.models import batch, compile_sgd, linear_text_model
from tests.testing import TestCase

GLOBAL_BATCH, STEPS = 8, 2


class TestMultiWorker(TestCase):
    @pytest.mark.parametrize("method,objective", [("fgm", "sum"), ("pgd", "adversarial")])
    def test_two_workers_give_the_single_device_result(self, tmp_path, method, objective):
        workers, histories = multi_worker.train_on_two_workers(
            str(tmp_path), method, objective, GLOBAL_BATCH, STEPS
        )
        self.setup_method(None)
        model = compile_sgd(linear_text_model(), lr=0.5)
        keras_adv.adversarial_training(model, "emb", 0.7, method=method, objective=objective)
        x, y = batch(size=GLOBAL_BATCH * STEPS, seed=3)
        single = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0).history
        for weights in workers:
            for actual, want in zip(weights, model.get_weights()):
                self.assertAllClose(actual, want, rtol=1e-5, atol=2e-6)
        # What callbacks such as EarlyStopping read: not summed over the workers.
        for history in histories:
            for name in ("loss", "adversarial_loss"):
                self.assertAllClose(history[name], single[name], rtol=1e-5)

    def test_the_reduction_of_the_logs_is_put_back_by_the_off_switch(self):
        # The line has `fit` take the step's logs (metric results, the same on
        # every replica) from one replica, not summed over the workers.
        model = compile_sgd(linear_text_model())
        assert model.distribute_reduction_method == "auto"
        keras_adv.adversarial_training(model, "emb", 0.7)
        keras_adv.adversarial_training(model, "emb", 0.3)  # Called again.
        assert model.distribute_reduction_method == "first"
        keras_adv.remove_adversarial_training(model)
        assert model.distribute_reduction_method == "auto"
        # A reduction the user chose stays.
        model.distribute_reduction_method = "sum"
        keras_adv.adversarial_training(model, "emb", 0.7)
        assert model.distribute_reduction_method == "sum"
        keras_adv.remove_adversarial_training(model)
        assert model.distribute_reduction_method == "sum"
