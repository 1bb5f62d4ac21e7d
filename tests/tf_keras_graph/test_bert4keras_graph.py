"""bert4keras on tf-keras with eager execution disabled, as the original recipe ran."""

import numpy as np
import pytest
import tensorflow as tf
from bert4keras.backend import K, keras

import keras_adv
from tests.bert4keras_models import VOCAB, token_batch, tiny_bert_classifier, used_and_unused_rows
from tests.testing import TestCase

OPTIONS = [
    dict(method="fgm", objective="sum"),
    dict(method="fgm", objective="adversarial"),
    dict(method="pgd", objective="sum"),
    dict(method="pgd", objective="adversarial"),
]


def _compiled(optimizer="adam", **kwargs):
    model = tiny_bert_classifier()
    model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer, **kwargs)
    return model


def original_recipe(model, embedding_name, epsilon):
    """The published Keras recipe, as DESIGN.md describes it (for parity only).

    A dense embedding gradient through K.function, the perturbation added and
    subtracted through numpy around the old train function.
    """
    model._make_train_function()
    old_train_function = model.train_function
    embeddings = model.get_layer(embedding_name).embeddings
    inputs = model._feed_inputs + model._feed_targets + model._feed_sample_weights
    gradients = K.gradients(model.total_loss, [embeddings])
    gradients = K.zeros_like(embeddings) + gradients[0]
    embedding_gradients = K.function(inputs=inputs, outputs=[gradients])

    def train_function(inputs):
        grads = embedding_gradients(inputs)[0]
        delta = epsilon * grads / (np.sqrt((grads**2).sum()) + 1e-8)
        K.set_value(embeddings, K.eval(embeddings) + delta)
        outputs = old_train_function(inputs)
        K.set_value(embeddings, K.eval(embeddings) - delta)
        return outputs

    model.train_function = train_function


class TestParityWithTheOriginalRecipe(TestCase):
    @pytest.mark.parametrize("optimizer", ["sgd", "adam"])
    def test_same_weights_after_one_step(self, optimizer):
        x, y = token_batch()
        reference = _compiled(keras.optimizers.legacy.SGD(0.5) if optimizer == "sgd" else "adam")
        initial = reference.get_weights()
        original_recipe(reference, "Embedding-Token", 0.5)
        reference.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)

        model = _compiled(keras.optimizers.legacy.SGD(0.5) if optimizer == "sgd" else "adam")
        model.set_weights(initial)
        keras_adv.adversarial_training(model, "Embedding-Token", 0.5, objective="adversarial")
        model.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)

        moved = 0.0
        for ours, theirs, start in zip(model.get_weights(), reference.get_weights(), initial):
            self.assertAllClose(ours, theirs, rtol=1e-4, atol=1e-6)
            moved = max(moved, np.abs(theirs - start).max())
        assert moved > 1e-3  # The step did something.

    def test_the_recipe_leaves_residue_and_keras_adv_does_not(self):
        x, y = token_batch()
        results = []
        for use_recipe in (True, False):
            model = _compiled(keras.optimizers.legacy.SGD(0.0))
            embedding = model.get_layer("Embedding-Token").embeddings
            before = K.get_value(embedding)
            if use_recipe:
                original_recipe(model, "Embedding-Token", 0.5)
            else:
                keras_adv.adversarial_training(model, "Embedding-Token", 0.5, objective="adversarial")
            model.fit(x, y, batch_size=4, epochs=3, verbose=0)
            results.append(np.array_equal(K.get_value(embedding), before))
        assert results == [False, True]


class TestGraphStep(TestCase):
    def test_no_dense_vocabulary_sized_tensor_in_the_step(self):
        model = _compiled(keras.optimizers.legacy.SGD(0.1))
        graph = model.total_loss.graph
        existing = set(graph.get_operations())
        keras_adv.adversarial_training(model, "Embedding-Token", 0.5, method="pgd")
        model._make_train_function()
        dense = [
            op.name
            for op in graph.get_operations()
            if op not in existing
            for out in op.outputs
            if out.dtype == tf.float32 and out.shape.as_list()[:1] == [VOCAB]
        ]
        assert dense == []

    @pytest.mark.parametrize("options", OPTIONS)
    def test_trains_and_touches_only_the_batch_rows(self, options):
        model = _compiled()
        weights = [w.name for w in model.weights]
        embedding = model.get_layer("Embedding-Token").embeddings
        before = K.get_value(embedding)
        keras_adv.adversarial_training(model, "Embedding-Token", 0.5, **options)
        x, y = token_batch()
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        assert np.isfinite(history["loss"][0])
        after = K.get_value(embedding)
        used, unused = used_and_unused_rows(x[0])
        assert np.abs(after[used] - before[used]).min() > 0
        self.assertBitEqual(after[unused], before[unused])
        assert [w.name for w in model.weights] == weights

    @pytest.mark.parametrize("options", [OPTIONS[1], OPTIONS[2]])
    def test_learning_rate_zero_is_bit_exact(self, options):
        for adversarial in (False, True):
            model = _compiled(keras.optimizers.legacy.Adam(0.0))
            before = model.get_weights()
            if adversarial:
                keras_adv.adversarial_training(model, "Embedding-Token", 2.0, **options)
            model.fit(*token_batch(size=16), batch_size=4, epochs=2, verbose=0)
            # The plain run shows the optimizer alone leaves these weights as they were.
            self.assertWeightsBitEqual(model.get_weights(), before)

    def test_survives_compile_and_removal_gives_plain_steps(self):
        x, y = token_batch()
        model, plain = _compiled(keras.optimizers.legacy.SGD(0.5)), _compiled()
        plain.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.legacy.SGD(0.5))
        keras_adv.adversarial_training(model, "Embedding-Token", 0.5)
        model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.legacy.SGD(0.5))
        for adversarial in (True, False):
            # One step of each from the same weights.
            plain.set_weights(model.get_weights())
            for m in (model, plain):
                m.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)
            gap = max(np.abs(a - b).max() for a, b in zip(model.get_weights(), plain.get_weights()))
            if adversarial:
                assert gap > 1e-4  # Still adversarial after compile().
                keras_adv.remove_adversarial_training(model)
            else:
                assert gap == 0.0  # Removed: a plain step, bit for bit.

    def test_new_optimizer_is_refused_with_the_fix(self):
        model = tiny_bert_classifier()
        model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.1))
        with pytest.raises(TypeError, match="legacy optimizer.*legacy.Adam"):
            keras_adv.adversarial_training(model, "Embedding-Token", 0.5)

    def test_batch_normalization_is_refused(self):
        tokens = keras.Input((5,), dtype="int32")
        x = keras.layers.Embedding(20, 4, name="emb")(tokens)
        x = keras.layers.BatchNormalization()(keras.layers.Flatten()(x))
        model = keras.Model(tokens, keras.layers.Dense(2)(x))
        model.compile(loss="mse", optimizer="sgd")
        with pytest.raises(NotImplementedError, match="batch normalization.*eager execution"):
            keras_adv.adversarial_training(model, "emb", 0.5)

    def test_weights_round_trip(self, tmp_path):
        model = _compiled()
        keras_adv.adversarial_training(model, "Embedding-Token", 0.5, method="pgd")
        model.fit(*token_batch(), verbose=0)
        path = str(tmp_path / "weights.h5")
        model.save_weights(path)
        fresh = tiny_bert_classifier()
        fresh.load_weights(path)
        x, _ = token_batch(seed=3)
        np.testing.assert_array_equal(fresh.predict(x), model.predict(x))


class TestDistributionRefused(TestCase):
    """tf-keras's graph-mode `fit` trains under a strategy on clones of the
    model, which would skip keras_adv's step: refused, never a plain step."""

    def test_model_compiled_under_a_strategy_is_refused_at_the_call(self):
        from tests.models import compile_sgd, linear_text_model

        with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
            model = compile_sgd(linear_text_model())
        with pytest.raises(NotImplementedError, match="eager execution.*MirroredStrategy"):
            keras_adv.adversarial_training(model, "emb", 0.5)

    def test_model_compiled_under_a_strategy_later_is_refused_at_fit(self):
        from tests.models import batch, compile_sgd, linear_text_model

        strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
        with strategy.scope():
            model = linear_text_model()
        compile_sgd(model)
        keras_adv.adversarial_training(model, "emb", 0.5)
        with strategy.scope():
            compile_sgd(model)
        before = model.get_weights()
        with pytest.raises(NotImplementedError, match="silently skipped"):
            model.fit(*batch(), epochs=1, verbose=0)
        self.assertWeightsBitEqual(model.get_weights(), before)
