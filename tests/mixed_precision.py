"""Mixed precision (`mixed_float16` with the loss-scale optimizer), on one
device and under MirroredStrategy: epsilon means what it means in float32,
and a step whose gradients are not finite is skipped with every weight clean.

Stack-neutral: tests/keras3 runs it on one device on every Keras 3 backend,
and the mirrored test folders (two logical CPUs) on one device and mirrored.
"""

import contextlib

import keras
import numpy as np

import keras_adv
from tests import reference
from tests.models import batch, linear_text_model, params_of
from tests.testing import TestCase

LR = 0.5


def _scope(strategy_name):
    """The scope to build the model in: MirroredStrategy's, or none."""
    if strategy_name == "mirrored":
        from tests.mirrored import mirrored_strategy

        return mirrored_strategy().scope()
    return contextlib.nullcontext()


def _copies(variable, strategy_name):
    """Each replica's copy of `variable`, as numpy (one on one device)."""
    if strategy_name == "mirrored":
        from tests.mirrored import mirrored_strategy, replica_values

        return replica_values(variable, mirrored_strategy())
    return [np.array(variable)]


def _loss_scale(optimizer):
    # Keras 3's LossScaleOptimizer, or tf-keras's.
    scale = optimizer.dynamic_scale if hasattr(optimizer, "dynamic_scale") else optimizer.loss_scale
    return float(np.asarray(scale))


class MixedPrecisionTests(TestCase):
    # Where each test trains: "one device", and "mirrored" in the mirrored folders.
    strategies = ["one device", "mirrored"]

    def setup_method(self, method):
        super().setup_method(method)
        keras.mixed_precision.set_global_policy("mixed_float16")

    def teardown_method(self, method):
        keras.mixed_precision.set_global_policy("float32")

    def _compiled(self, strategy_name, loss):
        with _scope(strategy_name):
            model = linear_text_model()
            model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss)
        assert "LossScaleOptimizer" in type(model.optimizer).__name__
        return model

    def test_epsilon_means_what_it_means_in_float32(self):
        for strategy_name in self.strategies:
            self._check_epsilon(strategy_name)

    def _check_epsilon(self, strategy_name):
        self.setup_method(None)
        model = self._compiled(
            strategy_name, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", 0.7)
        history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
        expected, _, adversarial_loss = reference.adversarial_sgd_step(
            before, x, y, LR, "fgm", 0.7, "sum"
        )
        # float16 activations: agreement to ~1e-3, far closer than epsilon's
        # effect (the step moves E by more than 0.02 here, ten times atol).
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=5e-3, atol=2e-3)
        assert np.abs(expected[0] - before[0]).max() > 0.02
        self.assertAllClose(history["adversarial_loss"][0], adversarial_loss, rtol=5e-3)

    def test_vat_and_awp_mean_what_they_mean_in_float32(self):
        from tests.closed_form import step_noise_of

        x, y = batch()
        for strategy_name in self.strategies:
            for name in ("vat", "awp"):
                self.setup_method(None)
                model = self._compiled(
                    strategy_name, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
                )
                before = params_of(model)
                if name == "vat":
                    method = keras_adv.VAT(epsilon=1.5, xi=1.0, weight=2.0)
                    keras_adv.adversarial_training(model, "emb", method=method)
                    expected = reference.vat_sgd_step(
                        before, x, y, LR, step_noise_of(model, x), 1.5, 1.0, 1, 2.0
                    )[0]
                else:
                    keras_adv.adversarial_training(model, method=keras_adv.AWP(alpha=0.5, epsilon=0.2))
                    expected = reference.awp_sgd_step(before, x, y, LR, 0.5, 0.2, 1, "sum")[0]
                model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
                for actual, want in zip(params_of(model), expected):
                    self.assertAllClose(actual, want, rtol=5e-3, atol=2e-3)
                # The method's own effect is well beyond that tolerance.
                plain, _ = reference.plain_sgd_step(before, x, y, LR)
                if name == "awp":  # "sum": the clean gradient, then the perturbed one.
                    plain = [2 * p - b for p, b in zip(plain, before)]
                assert max(np.abs(e - p).max() for e, p in zip(expected, plain)) > 0.01

    def test_a_step_with_non_finite_gradients_is_skipped_and_nothing_stays_perturbed(self):
        for strategy_name in self.strategies:
            self._check_skipped_step(strategy_name)

    def _check_skipped_step(self, strategy_name):
        self.setup_method(None)
        # Per example: compile's loss container reduces it (as tf-keras
        # requires of a loss called inside a function under a strategy).
        cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

        def overflowing_loss(y_true, y_pred):
            # Finite in float32, infinite once the loss scale multiplies it.
            return cross_entropy(y_true, y_pred) * 1e38

        model = self._compiled(strategy_name, overflowing_loss)
        x, y = batch()
        before = [_copies(v, strategy_name) for v in model.weights]
        keras_adv.adversarial_training(model, "emb", 0.7)
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
        for variable, copies in zip(model.weights, before):
            for replica, was in zip(_copies(variable, strategy_name), copies):
                self.assertBitEqual(replica, was)
        assert _loss_scale(model.optimizer) == model.optimizer.initial_scale / 2
