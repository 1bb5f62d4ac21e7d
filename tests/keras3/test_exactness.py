"""The embedding is never left perturbed: bit-exact at learning rate 0, intact
after an exception inside a step, and no autodiff work that is not needed."""

import keras
import numpy as np
import pytest

import keras_adv
from tests.failing_step import FailingStepTests
from tests.models import batch, compile_sgd, linear_text_model
from tests.testing import TestCase, execution_modes

METHODS = [
    dict(method="fgm", objective="sum"),
    dict(method="fgm", objective="adversarial"),
    dict(method="pgd", objective="sum"),
    dict(method="pgd", objective="adversarial"),
]


class TestExactRestore(TestCase):
    def _train_at_learning_rate_zero(self, mode, options=None):
        self.setup_method(None)
        model = linear_text_model()
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=0.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            **mode,
        )
        # Values that a float round trip (E + r) - r would not give back.
        weights = model.get_weights()
        weights[0][:2] = np.array([1e-30, 0.123456789], "float32")[:, None]
        model.set_weights(weights)
        before = model.get_weights()
        if options is not None:
            keras_adv.adversarial_training(model, "emb", 3.0, **options)
        x, y = batch(size=32)
        history = model.fit(x, y, batch_size=4, epochs=3, verbose=0)
        assert len(history.history["loss"]) == 3
        return before, model.get_weights()

    # The plain run of each mode, shared by the methods' tests (every run
    # starts from the same seed).
    _plain = {}

    @pytest.mark.parametrize("options", METHODS)
    @pytest.mark.parametrize("mode", [{}] + execution_modes()[:2])
    def test_learning_rate_zero_keeps_every_weight_bit_identical(self, options, mode):
        key = repr(mode)
        if key not in self._plain:
            self._plain[key] = self._train_at_learning_rate_zero(mode)[1]
        plain = self._plain[key]
        before, adversarial = self._train_at_learning_rate_zero(mode, options)
        # Exactly what the optimizer alone gives...
        self.assertWeightsBitEqual(adversarial, plain)
        # ...which, at learning rate 0, is the original matrix.
        self.assertBitEqual(adversarial[0], before[0])

    def test_model_gains_no_variables_and_keeps_its_class(self):
        model = compile_sgd(linear_text_model())
        paths = [v.path for v in model.weights]
        cls = type(model)
        keras_adv.adversarial_training(model, "emb", 0.5, method="pgd")
        model.fit(*batch(), epochs=1, verbose=0)
        assert [v.path for v in model.weights] == paths
        assert [v.path for v in model.variables] == paths
        assert type(model) is cls
        # The adversarial loss is the train step's: evaluate does not report it.
        assert set(model.evaluate(*batch(), return_dict=True, verbose=0)) == {"loss"}


class TestFailingStep(FailingStepTests):
    if keras.backend.backend() == "jax":
        # When a step raises, Keras on JAX loses the model's weights in plain
        # training too: `fit` has moved them out of the variables, and a
        # compiled step has been given (donated) their buffers
        # (tests/keras3_jax/test_jax.py shows both). Run eagerly and through
        # `train_on_batch`, the weights stay, and show what the step left.
        modes = [{"run_eagerly": True}]
        run_failing_step = "train_on_batch"
