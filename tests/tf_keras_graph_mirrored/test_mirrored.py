"""MirroredStrategy parity (tests/mirrored.py) with eager execution disabled."""

import numpy as np

import keras_adv
from tests.mirrored import MirroredParityTests


class TestMirroredParity(MirroredParityTests):
    history_has_adversarial_loss = False  # Graph mode's History: the compiled metrics only.
    refuses_start_step_with_rows = False

    def test_one_device_strategy_gives_the_single_device_result(self):
        # Its v1 loop also trains a clone of the model, as MirroredStrategy's does.
        import tensorflow as tf

        results = []
        for strategy in (tf.distribute.OneDeviceStrategy("/cpu:0"), tf.distribute.get_strategy()):
            model, _ = self._train(strategy, "pgd", dict(epsilon=0.7, alpha=0.3, steps=2), "sum", False)
            results.append(model.get_weights())
        for a, b in zip(*results):
            self.assertAllClose(a, b, rtol=1e-5, atol=2e-6)
        # The clone trained adversarially: a plain step (epsilon -> 0, the
        # adversarial gradient alone) lands elsewhere.
        plain, _ = self._train(tf.distribute.get_strategy(), "pgd", dict(epsilon=1e-9), "adversarial", False)
        plain_weights = plain.get_weights()
        assert np.abs(plain_weights[0] - results[0][0]).max() > 1e-3

    def test_the_line_before_a_compile_under_the_strategy(self):
        # `compile` makes the model a new (plain) clone cache; the line's
        # setting still reaches the clones that `fit` builds.
        import tensorflow as tf

        from tests.mirrored import GLOBAL_BATCH, LR, STEPS, mirrored_strategy
        from tests.models import batch, compile_sgd, linear_text_model

        results = []
        for strategy in (mirrored_strategy(), tf.distribute.get_strategy()):
            self.setup_method(None)
            with strategy.scope():
                model = linear_text_model()
            compile_sgd(model, lr=LR)
            keras_adv.adversarial_training(model, "emb", 0.7)
            with strategy.scope():
                compile_sgd(model, lr=LR)
            x, y = batch(size=GLOBAL_BATCH * STEPS, seed=3)
            model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
            results.append(model.get_weights())
        for a, b in zip(*results):
            self.assertAllClose(a, b, rtol=1e-5, atol=2e-6)
