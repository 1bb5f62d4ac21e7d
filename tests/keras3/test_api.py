"""The public API: its options, its errors, and its life cycle on a model."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_adv
from tests import reference
from tests.models import batch, compile_sgd, linear_text_model, params_of
from tests.testing import TestCase


def _fit_one_step(model):
    x, y = batch()
    return model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)


class TestBadInput(TestCase):
    def setup_method(self, method):
        super().setup_method(method)
        self.model = compile_sgd(linear_text_model())

    @pytest.mark.parametrize(
        "kwargs,error,words",
        [
            (dict(epsilon=0.0), ValueError, "epsilon"),
            (dict(epsilon=-1.0), ValueError, "epsilon"),
            (dict(epsilon=float("nan")), ValueError, "epsilon"),
            (dict(epsilon=float("inf")), ValueError, "epsilon"),
            (dict(epsilon="0.5"), TypeError, "epsilon"),
            (dict(epsilon=True), TypeError, "epsilon"),
            (dict(method="pgd", steps=0), ValueError, "steps"),
            (dict(method="pgd", steps=2.5), TypeError, "steps"),
            (dict(method="pgd", alpha=0.0), ValueError, "alpha"),
            (dict(method="pgd", alpha=-0.1), ValueError, "alpha"),
            # FGM takes one step of epsilon: PGD's parameters are refused, not ignored.
            (dict(method="fgm", steps=0), ValueError, "`steps` is PGD's.*Drop it, or pass method='pgd'"),
            (dict(method="fgm", steps=2.5), ValueError, "`steps` is PGD's"),
            (dict(method="fgm", alpha=0.0), ValueError, "`alpha` is PGD's"),
            (dict(steps=3, alpha=0.3), ValueError, "`steps` and `alpha` are PGD's"),
            (dict(method=keras_adv.FGM(0.5), epsilon=0.7), ValueError, "`epsilon` beside the method object"),
            (dict(method="fgx"), ValueError, "'awp', 'fgm', 'fgsm', 'freelb', 'gradient_penalty', 'neftune', 'pgd', 'rdrop', 'vat'"),
            (dict(method="fgsm", steps=2), ValueError, "`steps` is PGD's: FGSM takes one step"),
            (dict(per_example="yes"), TypeError, "per_example"),
            # Every other kind of value gets the same message.
            (dict(per_example=np.array([True, False])), TypeError, "`per_example` must be True or False"),
            (dict(epsilon=np.array([0.5, 0.5])), TypeError, "`epsilon` must be a positive float .a Python or numpy scalar"),
            (dict(epsilon=np.array(True)), TypeError, "`epsilon` must be a positive float .a Python or numpy scalar"),
            (dict(start_step=1.5), TypeError, "`start_step` must be an int >= 0 .a Python or numpy scalar"),
            (dict(start_step=np.float64(1.0)), TypeError, "`start_step` must be an int >= 0"),
            (dict(relative_epsilon=1), TypeError, "`relative_epsilon` must be True or False"),
            (dict(objective="clean"), ValueError, "'sum', 'adversarial'"),
        ],
    )
    def test_bad_option(self, kwargs, error, words):
        with pytest.raises(error, match=words):
            keras_adv.adversarial_training(self.model, "emb", **kwargs)
        assert not keras_adv.api._stacks.stack_for(self.model).is_installed(self.model)

    def test_model_not_compiled(self):
        with pytest.raises(ValueError, match="not compiled.*compile"):
            keras_adv.adversarial_training(linear_text_model(), "emb")

    def test_not_a_model(self):
        with pytest.raises(TypeError, match="Keras model"):
            keras_adv.adversarial_training(object(), "emb")

    def test_unknown_name_lists_the_embedding_layers(self):
        with pytest.raises(ValueError, match=r"No layer or variable named 'embedding'.*'emb' \(Embedding, 20 x 4"):
            keras_adv.adversarial_training(self.model, "embedding")

    def test_layer_without_embedding_matrix(self):
        with pytest.raises(TypeError, match=r"'dense' \(Dense\) has no embedding matrix.*'emb'"):
            keras_adv.adversarial_training(self.model, "dense")

    @pytest.mark.parametrize("name", ["dense/bias", "dense/kernel"])
    def test_variable_that_is_not_an_embedding_matrix(self, name):
        with pytest.raises(TypeError, match=rf"'{name}' \(shape .*\) is not the matrix of an embedding layer.*'emb'"):
            keras_adv.adversarial_training(self.model, name)

    def test_name_of_wrong_type(self):
        with pytest.raises(TypeError, match="non-empty string"):
            keras_adv.adversarial_training(self.model, 3)

    def test_ambiguous_name_lists_the_matches(self):
        def branch(name):
            tokens = keras.Input((5,), dtype="int32")
            h = keras.layers.Embedding(20, 4, name="emb")(tokens)
            return keras.Model(tokens, keras.layers.GlobalAveragePooling1D()(h), name=name)

        tokens = keras.Input((5,), dtype="int32")
        merged = keras.layers.Concatenate()([branch("left")(tokens), branch("right")(tokens)])
        model = compile_sgd(keras.Model(tokens, keras.layers.Dense(3)(merged)))
        with pytest.raises(ValueError, match="ambiguous.*'left/emb', 'right/emb'"):
            keras_adv.adversarial_training(model, "emb")
        # The qualified names pick one.
        right = model.get_layer("right").get_layer("emb").embeddings
        assert keras_adv.find_embedding(model, "right/emb") is right
        assert keras_adv.find_embedding(model, "right/emb/embeddings") is right
        keras_adv.adversarial_training(model, "right/emb")

    def test_custom_train_step_is_not_silently_replaced(self):
        class CustomStep(keras.Model):
            def train_step(self, data):
                return super().train_step(data)

        tokens = keras.Input((5,), dtype="int32")
        h = keras.layers.Embedding(20, 4, name="emb")(tokens)
        model = CustomStep(tokens, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
        compile_sgd(model)
        with pytest.raises(TypeError, match="overrides `train_step`.*perturbed_embedding"):
            keras_adv.adversarial_training(model, "emb")

    def test_embedding_the_loss_does_not_use(self):
        tokens = keras.Input((5,), dtype="int32")
        used = keras.layers.Embedding(20, 4, name="used")(tokens)
        unused = keras.layers.Embedding(20, 4, name="unused")(tokens)
        main = keras.layers.Dense(3, name="main")(keras.layers.Flatten()(used))
        aux = keras.layers.Dense(3, name="aux")(keras.layers.Flatten()(unused))
        model = keras.Model(tokens, {"main": main, "aux": aux})
        model.compile(optimizer="sgd", loss={"main": "mse", "aux": None})
        keras_adv.adversarial_training(model, "unused")
        x, _ = batch()
        with pytest.raises(ValueError, match="does not depend on the lookups of embedding layer 'unused'"):
            model.fit(x, {"main": np.zeros((8, 3)), "aux": np.zeros((8, 3))}, verbose=0)

    def test_remove_when_not_on_is_a_no_op(self):
        # An off switch: on a model that never had it, or twice, nothing happens.
        x, y = batch()
        expected, _ = reference.plain_sgd_step(params_of(self.model), x, y, 0.1)
        assert keras_adv.remove_adversarial_training(self.model) is self.model
        keras_adv.adversarial_training(self.model, "emb", 0.7)
        keras_adv.remove_adversarial_training(self.model)
        assert keras_adv.remove_adversarial_training(self.model) is self.model
        _fit_one_step(self.model)
        for actual, want in zip(params_of(self.model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("backend", ["numpy"])
    def test_unsupported_backend_names_what_is_supported(self, backend):
        script = textwrap.dedent(
            """
            import keras, keras_adv
            tokens = keras.Input((5,), dtype="int32")
            h = keras.layers.Embedding(20, 4, name="emb")(tokens)
            model = keras.Model(tokens, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
            model.compile(optimizer="sgd", loss="mse")
            try:
                keras_adv.adversarial_training(model, "emb")
            except NotImplementedError as error:
                print("NotImplementedError:", error)
            """
        )
        env = dict(os.environ, KERAS_BACKEND=backend)
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert f"NotImplementedError: keras_adv does not support the Keras 3 '{backend}' backend" in out
        assert "Keras 3 with the TensorFlow, JAX or PyTorch backend" in out


class TestScalarArguments(TestCase):
    """Every real scalar of the right kind counts as its Python value, as in Keras."""

    @pytest.mark.parametrize(
        "kwargs",
        [
            dict(epsilon=np.float32(0.7)),
            dict(epsilon=np.array(0.7)),
            dict(epsilon=keras.ops.convert_to_tensor(0.7)),  # The backend's scalar tensor.
            dict(epsilon=0.7, start_step=np.int64(0)),
            dict(epsilon=0.7, per_example=np.bool_(False)),
            dict(epsilon=0.7, relative_epsilon=np.array(False)),
        ],
        ids=["numpy float32", "0-d array", "backend tensor", "numpy start_step", "numpy bool", "0-d bool array"],
    )
    def test_numpy_and_backend_scalars_give_the_python_result(self, kwargs):
        model = compile_sgd(linear_text_model())
        x, y = batch()
        expected, _, _ = reference.adversarial_sgd_step(params_of(model), x, y, 0.1, "fgm", 0.7, "sum")
        keras_adv.adversarial_training(model, "emb", **kwargs)
        _fit_one_step(model)
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_method_objects_hold_python_numbers(self):
        pgd = keras_adv.PGD(epsilon=np.array(0.5), alpha=np.float32(0.25), steps=np.int64(2))
        assert pgd == keras_adv.PGD(epsilon=0.5, alpha=0.25, steps=2)
        assert type(pgd.epsilon) is float and type(pgd.steps) is int
        vat = keras_adv.VAT(power_iterations=np.int32(2), symmetric=np.bool_(True))
        assert vat.power_iterations == 2 and vat.symmetric is True
        with pytest.raises(TypeError, match="`steps` must be an int >= 1 .a Python or numpy scalar"):
            keras_adv.PGD(steps=np.float64(2.0))


class TestLifeCycle(TestCase):
    def _expected_after_one_fgm_step(self, model, epsilon, objective="sum"):
        x, y = batch()
        expected, _, _ = reference.adversarial_sgd_step(
            params_of(model), x, y, 0.1, "fgm", epsilon, objective
        )
        return expected

    def _assert_params(self, model, expected):
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_returns_the_model(self):
        model = compile_sgd(linear_text_model())
        assert keras_adv.adversarial_training(model, "emb") is model
        assert keras_adv.remove_adversarial_training(model) is model

    def test_a_second_call_replaces_the_first(self):
        model = compile_sgd(linear_text_model())
        keras_adv.adversarial_training(model, "emb", 5.0, method="pgd")
        keras_adv.adversarial_training(model, "emb", 0.3, objective="adversarial")
        expected = self._expected_after_one_fgm_step(model, 0.3, "adversarial")
        _fit_one_step(model)
        self._assert_params(model, expected)

    def test_takes_effect_after_an_earlier_fit(self):
        model = compile_sgd(linear_text_model())
        _fit_one_step(model)  # Caches a plain train function.
        keras_adv.adversarial_training(model, "emb", 0.7)
        expected = self._expected_after_one_fgm_step(model, 0.7)
        history = _fit_one_step(model)
        assert "adversarial_loss" in history.history
        self._assert_params(model, expected)

    def test_survives_a_later_compile(self):
        model = compile_sgd(linear_text_model())
        keras_adv.adversarial_training(model, "emb", 0.7)
        compile_sgd(model)
        expected = self._expected_after_one_fgm_step(model, 0.7)
        _fit_one_step(model)
        self._assert_params(model, expected)

    def test_remove_makes_training_plain_again(self):
        model = compile_sgd(linear_text_model())
        keras_adv.adversarial_training(model, "emb", 0.7)
        _fit_one_step(model)
        keras_adv.remove_adversarial_training(model)
        x, y = batch()
        expected, _ = reference.plain_sgd_step(params_of(model), x, y, 0.1)
        history = _fit_one_step(model)
        assert "adversarial_loss" not in history.history
        self._assert_params(model, expected)

    def test_embedding_by_variable_path_is_the_same_as_by_layer(self):
        model = compile_sgd(linear_text_model())
        keras_adv.adversarial_training(model, "emb/embeddings", 0.7)
        expected = self._expected_after_one_fgm_step(model, 0.7)
        _fit_one_step(model)
        self._assert_params(model, expected)

    def test_embedding_inside_a_nested_model(self):
        inner = linear_text_model()
        tokens = keras.Input((5,), dtype="int32")
        model = compile_sgd(keras.Model(tokens, inner(tokens)))
        assert keras_adv.find_embedding(model, "emb") is inner.get_layer("emb").embeddings
        keras_adv.adversarial_training(model, "emb", 0.7)
        expected = self._expected_after_one_fgm_step(inner, 0.7)
        _fit_one_step(model)
        self._assert_params(inner, expected)

    def test_frozen_embedding_is_perturbed_but_not_updated(self):
        model = linear_text_model()
        model.get_layer("emb").trainable = False
        compile_sgd(model)
        before = params_of(model)
        x, y = batch()
        expected, _, _ = reference.adversarial_sgd_step(before, x, y, 0.1, "fgm", 0.7, "sum")
        keras_adv.adversarial_training(model, "emb", 0.7)
        _fit_one_step(model)
        after = params_of(model)
        np.testing.assert_array_equal(after[0], before[0])
        # The Dense weights moved by the clean + adversarial gradients.
        for actual, want in zip(after[1:], expected[1:]):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
