"""Mixed precision (`mixed_float16` with the loss-scale optimizer), on one
device and under MirroredStrategy: epsilon means what it means in float32,
and a step whose gradients are not finite is skipped with every weight clean.

Stack-neutral; the mirrored test folders run it (two logical CPUs).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_adv
from tests import reference
from tests.mirrored import mirrored_strategy, replica_values
from tests.models import batch, linear_text_model, params_of
from tests.testing import TestCase

LR = 0.5
STRATEGIES = ["one device", "mirrored"]


def _strategy(name):
    if name == "mirrored":
        return mirrored_strategy()
    return tf.distribute.get_strategy()


def _loss_scale(optimizer):
    # Keras 3's LossScaleOptimizer, or tf-keras's.
    scale = optimizer.dynamic_scale if hasattr(optimizer, "dynamic_scale") else optimizer.loss_scale
    return float(np.asarray(scale))


class MixedPrecisionTests(TestCase):
    def setup_method(self, method):
        super().setup_method(method)
        keras.mixed_precision.set_global_policy("mixed_float16")

    def teardown_method(self, method):
        keras.mixed_precision.set_global_policy("float32")

    def _compiled(self, strategy, loss):
        with strategy.scope():
            model = linear_text_model()
            model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss)
        assert "LossScaleOptimizer" in type(model.optimizer).__name__
        return model

    @pytest.mark.parametrize("strategy_name", STRATEGIES)
    def test_epsilon_means_what_it_means_in_float32(self, strategy_name):
        model = self._compiled(
            _strategy(strategy_name), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", 0.7)
        history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
        expected, _, adversarial_loss = reference.adversarial_sgd_step(
            before, x, y, LR, "fgm", 0.7, "sum"
        )
        # float16 activations: agreement to ~1e-3, far closer than epsilon's
        # effect (the step moves E by more than 0.05 here).
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=5e-3, atol=2e-3)
        assert np.abs(expected[0] - before[0]).max() > 0.05
        self.assertAllClose(history["adversarial_loss"][0], adversarial_loss, rtol=5e-3)

    @pytest.mark.parametrize("strategy_name", STRATEGIES)
    def test_a_step_with_non_finite_gradients_is_skipped_and_nothing_stays_perturbed(
        self, strategy_name
    ):
        strategy = _strategy(strategy_name)
        # Per example: compile's loss container reduces it (as tf-keras
        # requires of a loss called inside a function under a strategy).
        cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

        def overflowing_loss(y_true, y_pred):
            # Finite in float32, infinite once the loss scale multiplies it.
            return cross_entropy(y_true, y_pred) * 1e38

        model = self._compiled(strategy, overflowing_loss)
        x, y = batch()
        before = [replica_values(v, strategy) for v in model.weights]
        keras_adv.adversarial_training(model, "emb", 0.7)
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
        for variable, copies in zip(model.weights, before):
            for replica, was in zip(replica_values(variable, strategy), copies):
                self.assertBitEqual(replica, was)
        assert _loss_scale(model.optimizer) == model.optimizer.initial_scale / 2
