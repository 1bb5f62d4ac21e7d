"""A KerasHub BertTextClassifier on a tiny random BertBackbone (no download)."""

import keras
import keras_hub
import numpy as np
import pytest

import keras_adv
from tests.testing import TestCase


def _classifier():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=200, num_layers=2, num_heads=2, hidden_dim=32,
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
            dict(method="fgm", objective="sum"),
            dict(method="fgm", objective="adversarial"),
            dict(method="pgd", objective="sum"),
            dict(method="pgd", objective="adversarial"),
        ],
    )
    def test_trains_with_fgm_and_pgd(self, options):
        classifier = _classifier()
        classifier.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        weights = [v.path for v in classifier.weights]
        token_embedding = classifier.backbone.token_embedding.embeddings
        before = keras.ops.convert_to_numpy(token_embedding)
        keras_adv.adversarial_training(classifier, "token_embedding", 0.5, **options)
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
