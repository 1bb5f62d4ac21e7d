"""Two JAX processes joined by `jax.distributed` on loopback, one CPU device
each, with `DataParallel` over both, give the single-device result for the
same global batch (tests/jax_processes.py)."""

import pytest

import keras_adv
from tests import jax_processes
from tests.models import batch, compile_sgd, linear_text_model
from tests.testing import TestCase

GLOBAL_BATCH, STEPS = 8, 2


class TestTwoProcesses(TestCase):
    @pytest.mark.parametrize(
        "options",
        [dict(epsilon=0.7), dict(epsilon=0.7, method="pgd", objective="adversarial")],
        ids=["fgm sum", "pgd adversarial"],
    )
    def test_two_processes_give_the_single_device_result(self, tmp_path, options):
        processes = jax_processes.train_in_two_processes(str(tmp_path), options, GLOBAL_BATCH, STEPS)
        self.setup_method(None)
        model = compile_sgd(linear_text_model(), lr=0.5)
        keras_adv.adversarial_training(model, "emb", **options)
        x, y = batch(size=GLOBAL_BATCH * STEPS, seed=3)
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        for weights in processes:
            for actual, want in zip(weights, model.get_weights()):
                self.assertAllClose(actual, want, rtol=1e-5, atol=2e-6)
