"""Everything Keras users do around `fit` keeps working under adversarial training."""

import os

import keras
import numpy as np
import pytest

import keras_adv
from tests import reference
from tests.models import batch, compile_sgd, linear_text_model, params_of
from tests.testing import TestCase, execution_modes

LR = 0.2


def _adversarial_model(**compile_kwargs):
    model = compile_sgd(linear_text_model(), lr=LR, **compile_kwargs)
    keras_adv.adversarial_training(model, "emb", 0.7, method="pgd", steps=2, alpha=0.4)
    return model


class TestFitOptions(TestCase):
    def _train(self, data_size=16, epochs=2, **compile_kwargs):
        self.setup_method(None)
        model = _adversarial_model(**compile_kwargs)
        x, y = batch(size=data_size)
        history = model.fit(x, y, batch_size=4, epochs=epochs, shuffle=False, verbose=0)
        return params_of(model), history.history

    @pytest.mark.parametrize("mode", execution_modes())
    def test_execution_modes_give_the_graph_result(self, mode):
        graph_params, graph_history = self._train()
        params, history = self._train(**mode)
        for a, b in zip(params, graph_params):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)
        self.assertAllClose(history["adversarial_loss"], graph_history["adversarial_loss"], rtol=1e-5)
        self.assertAllClose(history["loss"], graph_history["loss"], rtol=1e-5)

    def test_history_has_clean_and_adversarial_loss_beside_metrics(self):
        model = compile_sgd(linear_text_model(), lr=LR, metrics=["accuracy"])
        keras_adv.adversarial_training(model, "emb", 0.7)
        x, y = batch(size=16)
        history = model.fit(
            x, y, batch_size=4, epochs=2, validation_data=batch(size=8, seed=5), verbose=0
        ).history
        assert set(history) == {
            "loss", "adversarial_loss", "accuracy", "val_loss", "val_accuracy"
        }
        for values in history.values():
            assert len(values) == 2 and np.all(np.isfinite(values))
        # Validation is a plain evaluation of the trained model.
        val_loss = model.evaluate(*batch(size=8, seed=5), verbose=0)[0]
        self.assertAllClose(history["val_loss"][-1], val_loss, rtol=1e-5)

    def test_sample_weight_scales_the_update_like_the_learning_rate(self):
        # Loss x2 doubles the gradients but not the (normalised) perturbation:
        # the same step as learning rate x2 without weights.
        x, y = batch()
        model = _adversarial_model()
        model.fit(x, y, sample_weight=np.full(len(x), 2.0), batch_size=len(x), verbose=0)
        weighted = params_of(model)
        self.setup_method(None)
        model = compile_sgd(linear_text_model(), lr=2 * LR)
        keras_adv.adversarial_training(model, "emb", 0.7, method="pgd", steps=2, alpha=0.4)
        model.fit(x, y, batch_size=len(x), verbose=0)
        for a, b in zip(weighted, params_of(model)):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)

    def test_uneven_sample_weight_matches_the_reference(self):
        x, y = batch()
        weights = np.linspace(0.2, 2.0, len(x))
        model = compile_sgd(linear_text_model(), lr=LR)
        keras_adv.adversarial_training(model, "emb", 0.7)
        expected, _, _ = reference.adversarial_sgd_step(
            params_of(model), x, y, LR, "fgm", 0.7, "sum", sample_weight=weights
        )
        model.fit(x, y, sample_weight=weights, batch_size=len(x), verbose=0)
        for a, b in zip(params_of(model), expected):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)

    def test_class_weight_is_applied_per_sample(self):
        x, y = batch()
        class_weight = {0: 0.5, 1: 1.0, 2: 3.0}
        model = compile_sgd(linear_text_model(), lr=LR)
        keras_adv.adversarial_training(model, "emb", 0.7)
        expected, _, _ = reference.adversarial_sgd_step(
            params_of(model), x, y, LR, "fgm", 0.7, "sum",
            sample_weight=np.array([class_weight[c] for c in y]),
        )
        model.fit(x, y, class_weight=class_weight, batch_size=len(x), verbose=0)
        for a, b in zip(params_of(model), expected):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)


def _two_input_model(as_dict):
    """Two token inputs through one shared embedding, taken as a dict or a list."""
    first = keras.Input((5,), dtype="int32", name="first")
    second = keras.Input((5,), dtype="int32", name="second")
    embedding = keras.layers.Embedding(20, 4, name="emb")
    pool = keras.layers.GlobalAveragePooling1D()
    merged = keras.layers.Concatenate()([pool(embedding(first)), pool(embedding(second))])
    inputs = {"first": first, "second": second} if as_dict else [first, second]
    return keras.Model(inputs, keras.layers.Dense(3)(merged))


class TestSeveralInputs(TestCase):
    def test_list_and_dict_inputs_give_the_same_step(self):
        x1, y = batch(seed=1)
        x2, _ = batch(seed=2)
        results = []
        for as_dict in (True, False):
            self.setup_method(None)
            model = compile_sgd(_two_input_model(as_dict), lr=LR)
            keras_adv.adversarial_training(model, "emb", 0.7)
            data = {"first": x1, "second": x2} if as_dict else [x1, x2]
            before = params_of(model)
            model.fit(data, y, batch_size=len(y), verbose=0)
            results.append((before, params_of(model)))
        (before_a, after_a), (before_b, after_b) = results
        for a, b in zip(before_a, before_b):
            self.assertBitEqual(a, b)
        for a, b in zip(after_a, after_b):
            self.assertAllClose(a, b, rtol=1e-6, atol=1e-7)
        assert np.abs(after_a[0] - before_a[0]).max() > 1e-3


class TestCallbacks(TestCase):
    def test_checkpoint_early_stopping_and_tensorboard(self, tmp_path):
        model = compile_sgd(linear_text_model(), lr=LR)
        keras_adv.adversarial_training(model, "emb", 0.7)
        checkpoint = str(tmp_path / "best.keras")
        logs = tmp_path / "logs"
        history = model.fit(
            *batch(size=16),
            batch_size=4,
            epochs=20,
            validation_data=batch(size=8, seed=5),
            callbacks=[
                keras.callbacks.ModelCheckpoint(checkpoint, monitor="adversarial_loss", mode="min", save_best_only=True),
                keras.callbacks.EarlyStopping(monitor="adversarial_loss", mode="min", patience=0, min_delta=10.0),
                keras.callbacks.TensorBoard(log_dir=str(logs)),
            ],
            verbose=0,
        )
        # min_delta=10 means no epoch improves: EarlyStopping stops after epoch 2.
        assert len(history.history["loss"]) == 2
        restored = keras.models.load_model(checkpoint)
        x, _ = batch(size=8, seed=5)
        assert type(restored) is type(model)
        assert os.listdir(logs / "train") and os.listdir(logs / "validation")
        # Epoch 2 lowered the adversarial loss, so the checkpoint is the final model.
        assert history.history["adversarial_loss"][1] < history.history["adversarial_loss"][0]
        np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
