"""`keras.distribution.DataParallel` over two devices gives the single-device
result for the same global batch: every array of the adversarial step is
global, so the touched rows and the norms are the whole batch's."""

import jax
import keras
import numpy as np
import pytest

import keras_adv
from tests.models import batch, compile_sgd, linear_text_model, masked_text_model, params_of
from tests.testing import TestCase

OPTIONS = [
    dict(method="fgm", objective="sum"),
    dict(method="pgd", steps=3, alpha=0.3, objective="adversarial"),
    dict(method="fgsm", epsilon=0.2, relative_epsilon=True),
    dict(method="fgm", per_example=True),
    dict(method="fgm", relative_epsilon=True, epsilon=0.1),
    dict(method=keras_adv.GradientPenalty(weight=30.0)),
    dict(method=keras_adv.GradientPenalty(weight=0.5), relative_epsilon=True),
    dict(method="freelb", alpha=0.15, epsilon=0.1, relative_epsilon=True),
    dict(method="awp", epsilon=0.1, alpha=0.5, steps=2),
    dict(method=keras_adv.VAT(epsilon=0.7, xi=0.05, power_iterations=2, weight=2.0), relative_epsilon=True),
    dict(method="awp", epsilon=0.1, objective="adversarial", start_step=1),
    dict(method="neftune", alpha=5.0),
    dict(method="rdrop", alpha=4.0),  # On a model whose two passes take known masks.
]


class TestDataParallel(TestCase):
    def _train(self, distributed, options):
        self.setup_method(None)
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices()) if distributed else None
        )
        try:
            rdrop = options.get("method") == "rdrop"
            model = compile_sgd(masked_text_model() if rdrop else linear_text_model(), lr=0.5)
            if "epsilon" not in options and options.get("method") in ("fgm", "pgd"):
                options = dict(epsilon=0.7, **options)
            embedding = None if options.get("method") in ("awp", "rdrop") else "emb"  # They perturb no embedding.
            keras_adv.adversarial_training(model, embedding, **options)
            x, y = batch(size=16)
            history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
            devices = model.get_layer("emb").embeddings.value.sharding.device_set
            return params_of(model), history.history, len(devices)
        finally:
            keras.distribution.set_distribution(None)

    @pytest.mark.parametrize("options", OPTIONS)
    def test_two_devices_give_the_single_device_weights(self, options):
        single, single_history, _ = self._train(False, options)
        data_parallel, history, devices = self._train(True, options)
        assert devices == 2  # The step ran on both devices, the weights replicated.
        for a, b in zip(data_parallel, single):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)
        for name in set(history) & {"gradient_penalty", "vat_divergence", "rdrop_divergence", "adversarial_loss"}:
            self.assertAllClose(history[name], single_history[name], rtol=1e-5)
        self.assertAllClose(history["loss"], single_history["loss"], rtol=1e-5)
