"""What is particular to Keras 3 on PyTorch: the step runs eagerly, and
`torch.compile` (`jit_compile=True`) is refused with an error, never run
as something else."""

import keras
import pytest

import keras_adv
from tests.models import batch, compile_sgd, linear_text_model, params_of
from tests.testing import TestCase

assert keras.backend.backend() == "torch", "run this folder with KERAS_BACKEND=torch"


class TestTorchCompile(TestCase):
    def test_refused_at_the_call(self):
        model = compile_sgd(linear_text_model(), jit_compile=True)
        with pytest.raises(NotImplementedError, match="jit_compile=False"):
            keras_adv.adversarial_training(model, "emb", 0.5)

    def test_refused_at_the_first_step_after_a_later_compile(self):
        model = compile_sgd(linear_text_model())
        keras_adv.adversarial_training(model, "emb", 0.5)
        compile_sgd(model, jit_compile=True)
        before = params_of(model)
        with pytest.raises(NotImplementedError, match="torch.compile"):
            model.fit(*batch(), verbose=0)
        for actual, expected in zip(params_of(model), before):
            self.assertAllClose(actual, expected, rtol=0, atol=0)
