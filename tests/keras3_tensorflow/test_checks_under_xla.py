"""XLA drops TensorFlow's assertions, so a step's checks cannot raise in an
XLA-compiled step (`jit_compile=True`, Keras's default on a GPU); there what
failed becomes NaN, and the step's History says so instead of a silently
different step (keras_adv/_stacks/checks.py)."""

import keras
import numpy as np
import pytest

import keras_adv
from tests.models import batch, compile_sgd, linear_text_model
from tests.testing import TestCase


class TestBadScheduleUnderXla(TestCase):
    @pytest.mark.parametrize("method", ["fgm", "pgd", "freelb"])
    def test_a_negative_value_makes_the_adversarial_loss_nan(self, method):
        model = linear_text_model()
        model.compile(
            optimizer=keras.optimizers.SGD(0.5), jit_compile=True,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        turning_bad = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.7, -0.5])
        keras_adv.adversarial_training(model, "emb", turning_bad, method=method)
        x, y = batch(size=8, seed=5)
        first = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
        second = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
        assert np.isfinite(first["adversarial_loss"][0])
        assert np.isnan(second["adversarial_loss"][0])


class TestRDropWithoutDropoutUnderXla(TestCase):
    def test_the_divergence_and_the_weights_are_nan(self):
        model = compile_sgd(linear_text_model(), jit_compile=True)
        keras_adv.adversarial_training(model, method="rdrop")
        x, y = batch(size=8, seed=5)
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
        assert np.isnan(history["rdrop_divergence"][0])
        assert all(np.isnan(w).any() for w in model.get_weights())  # The embedding: its touched rows.
