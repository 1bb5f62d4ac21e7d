"""A KerasHub BertTextClassifier on a tiny random BertBackbone (no download)."""

import keras
import keras_hub
import numpy as np
import pytest

import keras_adv
from tests.testing import TestCase


def _classifier():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=200, num_layers=1, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=64, dropout=0.0,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=None, dropout=0.0
    )


def _data(size=8, length=16, seed=0):
    rng = np.random.RandomState(seed)
    x = {
        "token_ids": rng.randint(1, 60, size=(size, length)).astype("int32"),
        "segment_ids": np.zeros((size, length), "int32"),
        "padding_mask": np.ones((size, length), "int32"),
    }
    return x, rng.randint(0, 2, size=size).astype("int32")


class TestBertTextClassifier(TestCase):
    def test_token_embedding_is_found_inside_the_backbone(self):
        classifier = _classifier()
        with pytest.raises(ValueError):
            classifier.get_layer("token_embedding")
        token_embedding = classifier.backbone.token_embedding.embeddings
        assert keras_adv.find_embedding(classifier, "token_embedding") is token_embedding
        assert keras_adv.find_embedding(classifier, "token_embedding/embeddings") is token_embedding

    @pytest.mark.parametrize(
        "options",
        [
            # The objectives and modes (exact, with every method, on the
            # linear model in tests/closed_form.py) once each on a real
            # KerasHub model.
            dict(method="fgm", objective="sum"),
            dict(method="pgd", objective="adversarial", per_example=True, relative_epsilon=True,
                 epsilon=0.1, alpha=0.04),
        ],
    )
    def test_trains_with_each_method(self, options):
        classifier = _classifier()
        classifier.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        weights = [v.path for v in classifier.weights]
        token_embedding = classifier.backbone.token_embedding.embeddings
        before = keras.ops.convert_to_numpy(token_embedding)
        keras_adv.adversarial_training(classifier, "token_embedding", **{"epsilon": 0.5, **options})
        x, y = _data()
        history = classifier.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        # One step, no dropout: the perturbation goes up the loss.
        assert history["adversarial_loss"][0] > history["loss"][0]
        assert np.isfinite(history["adversarial_loss"][0])
        after = keras.ops.convert_to_numpy(token_embedding)
        used = np.unique(x["token_ids"])
        unused = np.setdiff1d(np.arange(200), used)
        assert np.abs(after[used] - before[used]).min() > 0  # Adam moved every used row...
        np.testing.assert_array_equal(after[unused], before[unused])  # ...and nothing else.
        assert [v.path for v in classifier.weights] == weights


class TestPerExamplePadding(TestCase):
    def test_padding_positions_get_no_perturbation_and_count_in_no_norm(self):
        # The model reads its `padding_mask` input; keras_adv reads it too.
        classifier = _classifier()
        classifier.compile(
            optimizer=keras.optimizers.SGD(0.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x, y = _data()
        x["padding_mask"][:, 10:] = 0
        padded = dict(x, token_ids=x["token_ids"].copy())
        padded["token_ids"][:, 10:] = 0
        results = []
        for data in (x, padded):  # Different tokens at the padding positions.
            self.setup_method(None)
            model = _classifier()
            model.set_weights(classifier.get_weights())
            model.compile(optimizer=keras.optimizers.SGD(0.0),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            keras_adv.adversarial_training(model, "token_embedding", 0.5, per_example=True)
            results.append(model.fit(data, y, batch_size=8, verbose=0).history)
        # What sits under the padding changes neither the loss nor the
        # perturbation of the real positions (attention masks the padding).
        self.assertAllClose(results[0]["adversarial_loss"], results[1]["adversarial_loss"], rtol=1e-5)
        assert results[0]["adversarial_loss"][0] > results[0]["loss"][0]

    @pytest.mark.parametrize(
        "method,history_name",
        [
            # On PyTorch its double backward needs the math attention kernel.
            (keras_adv.GradientPenalty(weight=1.0), "gradient_penalty"),
            (keras_adv.VAT(epsilon=1.0), "vat_divergence"),
            (keras_adv.AWP(epsilon=0.01), "adversarial_loss"),
        ],
        ids=["gradient penalty", "vat", "awp"],
    )
    def test_trains_with_the_further_methods(self, method, history_name):
        classifier = _classifier()
        classifier.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        weights = [v.path for v in classifier.weights]
        before = [keras.ops.convert_to_numpy(v) for v in classifier.trainable_weights]
        embedding = None if isinstance(method, keras_adv.AWP) else "token_embedding"
        keras_adv.adversarial_training(classifier, embedding, method=method)
        x, y = _data()
        history = classifier.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        assert np.isfinite(history[history_name][0]) and history[history_name][0] > 0
        after = [keras.ops.convert_to_numpy(v) for v in classifier.trainable_weights]
        assert all(np.isfinite(a).all() for a in after)
        assert sum(np.abs(a - b).max() > 0 for a, b in zip(after, before)) > len(before) // 2
        assert [v.path for v in classifier.weights] == weights
