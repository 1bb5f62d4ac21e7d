"""bert4keras on tf-keras with eager execution disabled, as the original recipe ran."""

import numpy as np
import pytest
import tensorflow as tf
from bert4keras.backend import K, keras

import keras_adv
from tests.bert4keras_models import (
    VOCAB, awp_step_on_written_weights, seq2seq_batch, tiny_bert_classifier, tiny_unilm, token_batch, used_and_unused_rows,
)
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


def _text_model(batch_norm=False):
    tokens = keras.Input((5,), dtype="int32")
    x = keras.layers.Flatten()(keras.layers.Embedding(20, 4, name="emb")(tokens))
    if batch_norm:
        x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dense(6, activation="tanh", activity_regularizer=keras.regularizers.l2(0.1))(x)
    return keras.Model(tokens, keras.layers.Dense(2)(x))


def _lookup_output(model, layer_name):
    """The tensor a lookup of `layer_name` returns in the model's own graph."""
    layer = model.get_layer(layer_name)
    (node,) = [n for n in layer._inbound_nodes if n.output_tensors.shape[-1] == layer.output_dim]
    return tf.nest.flatten(node.input_tensors)[0], node.output_tensors


def _hand_adversarial_sgd_step(model, layer_name, feed, epsilon, lr):
    """The weights after one SGD step on the adversarial loss, worked out from
    the same weights with the perturbation computed in numpy and fed in at the
    lookup (the model's tied output projection, if any, reads the clean E)."""
    session = tf.compat.v1.keras.backend.get_session()
    ids, looked_up = _lookup_output(model, layer_name)
    loss = model.total_loss
    ids_value, clean_lookup, lookup_grad = session.run(
        [ids, looked_up, tf.gradients(loss, looked_up)[0]], feed
    )
    ids_value = ids_value.astype("int64")
    rows = {}
    for token, grad in zip(ids_value.reshape(-1), lookup_grad.reshape(-1, lookup_grad.shape[-1])):
        rows[token] = rows.get(token, 0.0) + grad.astype("float64")
    norm = np.sqrt(sum(np.sum(g**2) for g in rows.values()))
    r = {token: epsilon * g / norm for token, g in rows.items()}
    perturbed = clean_lookup + np.array([r[t] for t in ids_value.reshape(-1)]).reshape(clean_lookup.shape)
    weights = model.trainable_weights
    fed = {**feed, looked_up: perturbed.astype("float32")}
    adversarial_loss, grads = session.run([loss, tf.gradients(loss, weights)], fed)
    new_weights = []
    for weight, grad in zip(weights, grads):
        dense = np.zeros(weight.shape, "float64")
        if hasattr(grad, "indices"):  # Gathered rows (a position embedding's).
            np.add.at(dense, grad.indices, grad.values)
        elif grad is not None:
            dense += grad
        # E's gradient holds its lookup's part (through the gather, at the fed
        # perturbed value) and the tied projection's (at the clean E).
        new_weights.append(K.get_value(weight) - lr * dense)
    return adversarial_loss, new_weights


class TestLayersThatAddLossesAndUpdates(TestCase):
    """A second call of the model in the training graph adds its own losses
    (a `Loss` layer, activity regularizers) and updates (batch norm): the
    perturbed pass's loss is the one built from them, and the model keeps
    only the clean pass's."""

    def test_unilm_loss_layer_model_step_matches_a_hand_computation(self):
        model = tiny_unilm()
        model.compile(optimizer=keras.optimizers.legacy.SGD(0.5))
        x = seq2seq_batch()
        feed = dict(zip(model.inputs, x))
        adversarial_loss, expected = _hand_adversarial_sgd_step(model, "Embedding-Token", feed, 0.5, 0.5)
        clean_loss = tf.compat.v1.keras.backend.get_session().run(model.total_loss, feed)
        assert adversarial_loss > clean_loss
        keras_adv.adversarial_training(model, "Embedding-Token", 0.5, objective="adversarial")
        model.fit(x, None, batch_size=len(x[0]), shuffle=False, verbose=0)
        for weight, want in zip(model.trainable_weights, expected):
            self.assertAllClose(K.get_value(weight), want, rtol=1e-4, atol=2e-6)
        assert len(model.losses) == 1  # The perturbed pass's loss is not kept on the model.

    def test_unilm_loss_layer_model_trains(self):
        model = tiny_unilm()
        model.compile(optimizer=keras.optimizers.legacy.Adam(1e-3))
        keras_adv.adversarial_training(model, "Embedding-Token", 0.5, method="pgd")
        nodes = [len(layer._inbound_nodes) for layer in model.layers]
        x = seq2seq_batch(size=8)
        history = model.fit(x, None, batch_size=4, epochs=3, verbose=0).history
        assert history["loss"][-1] < history["loss"][0]
        assert len(model.losses) == 1
        # The perturbed passes' nodes are gone too: `layer.output` still works.
        assert [len(layer._inbound_nodes) for layer in model.layers] == nodes
        keras.Model(model.inputs, model.get_layer("Embedding-Segment").output)

    def test_activity_regularizer_matches_the_recipe(self):
        # The recipe perturbs E itself, so its loss holds the regularizer's
        # term of the perturbed pass, as keras_adv's must (no tied matrix here).
        rng = np.random.RandomState(0)
        x, y = rng.randint(0, 20, (8, 5)).astype("int32"), rng.randint(0, 2, 8).astype("int32")
        results = []
        for use_recipe in (True, False):
            self.setup_method(None)
            model = _text_model()
            model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          optimizer=keras.optimizers.legacy.SGD(0.5))
            if use_recipe:
                initial = model.get_weights()
                original_recipe(model, "emb", 0.5)
            else:
                model.set_weights(initial)
                keras_adv.adversarial_training(model, "emb", 0.5, objective="adversarial")
            model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
            results.append(model.get_weights())
        for ours, theirs, start in zip(results[1], results[0], initial):
            self.assertAllClose(ours, theirs, rtol=1e-4, atol=2e-6)
        assert np.abs(results[1][0] - initial[0]).max() > 1e-3

    def test_batch_norm_trains_and_its_statistics_move_with_every_pass(self):
        rng = np.random.RandomState(0)
        x, y = rng.randint(0, 20, (8, 5)).astype("int32"), rng.randint(0, 2, 8).astype("int32")
        moved = []
        for options in (None, dict(method="pgd", steps=2, alpha=0.3)):
            self.setup_method(None)
            model = _text_model(batch_norm=True)
            model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          optimizer=keras.optimizers.legacy.SGD(0.0))
            if options is not None:
                keras_adv.adversarial_training(model, "emb", 0.5, **options)
            moving_mean = model.get_layer("bn").moving_mean
            before = K.get_value(moving_mean)
            model.fit(x, y, batch_size=8, verbose=0)
            moved.append(np.abs(K.get_value(moving_mean) - before).sum())
        # Three passes, three updates of the statistics (each from its own
        # batch statistics), not the one of a plain step.
        assert moved[1] > 2 * moved[0]


class TestAWPOnBert4kerasGraph(TestCase):
    @pytest.mark.parametrize("objective", ["sum", "adversarial"])
    def test_same_step_as_writing_the_perturbation_into_the_weights(self, objective):
        # AWP's passes call the BERT on perturbed copies of its weight
        # matrices; the public implementations write the perturbation in.
        x, y = token_batch()
        model = _compiled(keras.optimizers.legacy.SGD(0.5))
        expected = awp_step_on_written_weights(model, x, y, 0.5, 1.0, 0.05, objective)
        plain = awp_step_on_written_weights(model, x, y, 0.5, 1.0, 1e-12, "adversarial")
        assert max(np.abs(e - p).max() for e, p in zip(expected, plain)) > 1e-4
        before = K.batch_get_value(model.trainable_weights)
        keras_adv.adversarial_training(model, method=keras_adv.AWP(alpha=1.0, epsilon=0.05), objective=objective)
        model.fit(x, y, batch_size=len(y), shuffle=False, verbose=0)
        moved = 0.0
        for actual, want, start in zip(K.batch_get_value(model.trainable_weights), expected, before):
            self.assertAllClose(actual, want, rtol=1e-4, atol=1e-6)
            moved = max(moved, np.abs(want - start).max())
        assert moved > 1e-3  # The step did something.


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
