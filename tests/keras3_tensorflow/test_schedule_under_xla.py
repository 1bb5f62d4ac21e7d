"""XLA drops TensorFlow's assertions, so a bad schedule value cannot raise in
an XLA-compiled step (`jit_compile=True`, Keras's default on a GPU); there it
becomes NaN, and the step's adversarial loss says so instead of a silently
different step (keras_adv/_stacks/schedule.py)."""

import keras
import numpy as np
import pytest

import keras_adv
from tests.models import batch, linear_text_model
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
