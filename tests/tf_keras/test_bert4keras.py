"""bert4keras 0.11.5 on tf-keras, eager execution: the one line, end to end."""

import numpy as np
import pytest
import tensorflow as tf
from bert4keras.backend import keras

import keras_adv
from tests.bert4keras_models import (
    awp_step_on_written_weights, seq2seq_batch, tiny_bert_classifier, tiny_unilm, token_batch, used_and_unused_rows,
)
from tests.testing import TestCase, vocabulary_sized_ops

OPTIONS = [
    dict(method="fgm", objective="sum"),
    dict(method="fgm", objective="adversarial"),
    dict(method="pgd", objective="sum"),
    dict(method="pgd", objective="adversarial"),
]


def _compiled(lr=1e-3, **kwargs):
    model = tiny_bert_classifier()
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        **kwargs,
    )
    return model


class TestBert4kerasEager(TestCase):
    @pytest.mark.parametrize("options", OPTIONS)
    def test_trains_and_touches_only_the_batch_rows(self, options):
        model = _compiled()
        weights = [w.name for w in model.weights]
        embedding = model.get_layer("Embedding-Token").embeddings
        before = embedding.numpy()
        keras_adv.adversarial_training(model, "Embedding-Token", 0.5, **options)
        x, y = token_batch()
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        assert history["adversarial_loss"][0] > history["loss"][0] > 0
        after = embedding.numpy()
        used, unused = used_and_unused_rows(x[0])
        assert np.abs(after[used] - before[used]).min() > 0
        self.assertBitEqual(after[unused], before[unused])
        assert [w.name for w in model.weights] == weights

    def _trained_at_learning_rate_zero(self, options=None):
        self.setup_method(None)  # Every run starts from the same seed.
        model = _compiled(lr=0.0)
        before = model.get_weights()
        if options is not None:
            keras_adv.adversarial_training(model, "Embedding-Token", 2.0, **options)
        x, y = token_batch(size=16)
        model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        return model, before, model.get_weights()

    _plain = []  # The plain run, shared by the methods' tests.

    @pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[3]])
    def test_learning_rate_zero_is_bit_exact(self, options):
        if not self._plain:
            self._plain.append(self._trained_at_learning_rate_zero()[2])
        model, before, adversarial = self._trained_at_learning_rate_zero(options)
        self.assertWeightsBitEqual(adversarial, self._plain[0])
        index = [w.name for w in model.weights].index("Embedding-Token/embeddings:0")
        self.assertBitEqual(adversarial[index], before[index])

    def test_exception_in_a_perturbed_pass_restores_the_rows(self):
        calls = []

        def fail_on_second_call(x):
            calls.append(1)
            if len(calls) % 2 == 0:
                raise RuntimeError("perturbed pass failed")
            return x

        from bert4keras.models import build_transformer_model
        from tests.bert4keras_models import CONFIG

        bert = build_transformer_model(CONFIG, checkpoint_path=None)
        cls = keras.layers.Lambda(lambda x: fail_on_second_call(x[:, 0]))(bert.output)
        model = keras.models.Model(bert.input, keras.layers.Dense(2, activation="softmax")(cls))
        model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", run_eagerly=True)
        before = model.get_weights()
        keras_adv.adversarial_training(model, "Embedding-Token", 5.0)
        with pytest.raises(RuntimeError, match="perturbed pass failed"):
            model.fit(*token_batch(), verbose=0)
        self.assertWeightsBitEqual(model.get_weights(), before)

    def test_unknown_name_lists_the_embeddings(self):
        model = _compiled()
        with pytest.raises(ValueError, match=r"'Embedding-Token' \(Embedding, 120 x 32.*'Embedding-Segment'"):
            keras_adv.adversarial_training(model, "Embedding-Tokens", 0.5)
        assert keras_adv.find_embedding(model, "Embedding-Token/embeddings:0") is (
            model.get_layer("Embedding-Token").embeddings
        )

    def test_not_compiled_and_bad_options(self):
        with pytest.raises(ValueError, match="not compiled"):
            keras_adv.adversarial_training(tiny_bert_classifier(), "Embedding-Token")
        with pytest.raises(ValueError, match="epsilon"):
            keras_adv.adversarial_training(_compiled(), "Embedding-Token", -1.0)

    def test_remove_and_survive_compile(self):
        model = _compiled()
        keras_adv.adversarial_training(model, "Embedding-Token", 0.5)
        model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        assert "adversarial_loss" in model.fit(*token_batch(), verbose=0).history
        keras_adv.remove_adversarial_training(model)
        assert "adversarial_loss" not in model.fit(*token_batch(), verbose=0).history


class TestExecutionModes(TestCase):
    """`run_eagerly` and `jit_compile` on the linear model (cheap to compile)."""

    @pytest.mark.parametrize("mode", [{"run_eagerly": True}, {"jit_compile": True}])
    @pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[3]])
    def test_modes_agree_and_stay_exact(self, options, mode):
        from tests.models import batch, linear_text_model

        results = []
        for compile_kwargs, lr in (({}, 0.3), (mode, 0.3), (mode, 0.0)):
            self.setup_method(None)
            model = linear_text_model()
            model.compile(
                optimizer=keras.optimizers.Adam(lr),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                **compile_kwargs,
            )
            before = model.get_weights()
            keras_adv.adversarial_training(model, "emb", 0.7, **options)
            history = model.fit(*batch(size=16), batch_size=4, epochs=2, verbose=0).history
            results.append((model.get_weights(), history))
        (graph, graph_history), (moded, moded_history), (frozen, _) = results
        for a, b in zip(moded, graph):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)
        self.assertAllClose(moded_history["adversarial_loss"], graph_history["adversarial_loss"], rtol=1e-5)
        self.assertBitEqual(frozen[0], before[0])


@pytest.fixture(scope="module")
def trained_model():
    model = _compiled()
    keras_adv.adversarial_training(model, "Embedding-Token", 0.5, method="pgd")
    model.fit(*token_batch(size=16), batch_size=8, epochs=1, verbose=0)
    return model


class TestSavingAfterAdversarialTraining:
    def test_weights_round_trip_into_a_fresh_model(self, tmp_path, trained_model):
        path = str(tmp_path / "weights.h5")
        trained_model.save_weights(path)
        fresh = tiny_bert_classifier()
        fresh.load_weights(path)
        x, _ = token_batch(seed=3)
        np.testing.assert_array_equal(fresh.predict(x, verbose=0), trained_model.predict(x, verbose=0))

    @pytest.mark.parametrize("route", ["model.save", "tf.saved_model.save"])
    def test_saved_model_serves_the_same_predictions(self, tmp_path, trained_model, route):
        path = str(tmp_path / "saved_model")
        if route == "model.save":
            trained_model.save(path, save_format="tf")
        else:
            tf.saved_model.save(trained_model, path)
        served = tf.saved_model.load(path)
        x, _ = token_batch(seed=3)
        signature = served.signatures["serving_default"]
        outputs = signature(**{"Input-Token": tf.constant(x[0]), "Input-Segment": tf.constant(x[1])})
        (predicted,) = outputs.values()
        np.testing.assert_allclose(
            predicted.numpy(), trained_model.predict(x, verbose=0), rtol=1e-6, atol=1e-7
        )
        assert len(served.variables) == len(trained_model.weights)


class TestSparseStep(TestCase):
    def _dense_vocabulary_tensors(self, model):
        from tests.bert4keras_models import VOCAB

        x, y = token_batch()
        return vocabulary_sized_ops(model, (tuple(x), y), VOCAB)

    @pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[3]])
    def test_adds_no_dense_vocabulary_sized_tensor(self, options):
        model = tiny_bert_classifier()
        model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.1))
        plain = self._dense_vocabulary_tensors(model)
        keras_adv.adversarial_training(model, "Embedding-Token", 0.5, **options)
        assert self._dense_vocabulary_tensors(model) == plain


class TestAWPOnBert4keras(TestCase):
    """AWP reads perturbed copies of every weight matrix of a bert4keras BERT
    (its own layers, attention and feed-forward included), and that gives the
    step of the public implementations, which write the perturbation in."""

    @pytest.mark.parametrize("objective", ["sum", "adversarial"])
    def test_same_step_as_writing_the_perturbation_into_the_weights(self, objective):
        x, y = token_batch()
        model = _compiled_sgd(0.5)
        before = [w.numpy() for w in model.trainable_weights]
        expected = awp_step_on_written_weights(model, x, y, 0.5, 1.0, 0.05, objective)
        keras_adv.adversarial_training(model, method=keras_adv.AWP(alpha=1.0, epsilon=0.05), objective=objective)
        model.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)
        for variable, want in zip(model.trainable_weights, expected):
            self.assertAllClose(variable.numpy(), want, rtol=1e-4, atol=1e-6)
        # The perturbation changed the step: not the plain one.
        plain = awp_step_on_written_weights(_reset(model, before), x, y, 0.5, 1.0, 1e-12, "adversarial")
        assert max(np.abs(e - p).max() for e, p in zip(expected, plain)) > 1e-4


def _compiled_sgd(lr):
    model = tiny_bert_classifier()
    model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(lr))
    return model


def _reset(model, values):
    for variable, value in zip(model.trainable_weights, values):
        variable.assign(value)
    return model


class TestLossLayerModelEager(TestCase):
    """A UniLM model whose loss a `Loss` layer adds (compiled with an
    optimizer only). The graph-mode tests check its step against a hand
    computation; here: it trains, and its adversarial loss is the loss the
    model adds at the perturbed lookups (epsilon -> 0: the clean loss)."""

    def test_trains_and_the_adversarial_loss_is_the_layers_loss(self):
        x = seq2seq_batch(size=8)
        model = tiny_unilm()
        model.compile(optimizer=keras.optimizers.Adam(0.0))
        keras_adv.adversarial_training(model, "Embedding-Token", 1e-9, method="pgd", alpha=1e-10)
        history = model.fit(x, None, batch_size=8, verbose=0).history
        self.assertAllClose(history["adversarial_loss"][0], history["loss"][0], rtol=1e-6)
        clean = float(model.evaluate(x, None, batch_size=8, verbose=0))
        self.assertAllClose(history["loss"][0], clean, rtol=1e-5)

        keras_adv.adversarial_training(model, "Embedding-Token", 0.5)
        history = model.fit(x, None, batch_size=8, verbose=0).history
        assert history["adversarial_loss"][0] > history["loss"][0]

        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        history = model.fit(x, None, batch_size=4, epochs=3, verbose=0).history
        assert history["loss"][-1] < history["loss"][0]

    def test_per_example_on_the_tied_mlm_model_trains(self):
        # Only the lookups are perturbed; the tied MLM projection reads E.
        x = seq2seq_batch(size=8)
        model = tiny_unilm()
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        keras_adv.adversarial_training(
            model, "Embedding-Token", 0.1, method="pgd", alpha=0.04, per_example=True, relative_epsilon=True
        )
        history = model.fit(x, None, batch_size=4, epochs=3, verbose=0).history
        assert history["adversarial_loss"][0] > history["loss"][0]
        assert history["loss"][-1] < history["loss"][0]
