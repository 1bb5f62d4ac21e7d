"""Models for the ablation runner. Each is a Keras classifier returning logits,
whose token embedding the keras_adv one line perturbs by name.

The BERTs are tiny and randomly initialised (no download); bert4keras's runs on
tf-keras, so the command line prepares bert4keras before TensorFlow loads.
"""

import collections
import os

import numpy as np

__all__ = ["CharVocabulary", "EMBEDDING_NAMES", "build_model", "encode", "char_cnn"]

EMBEDDING_NAMES = {
    "char-cnn": "embedding",
    "kerashub-bert": "token_embedding",
    "bert4keras-bert": "Embedding-Token",
}
TINY_BERT = dict(num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128)


class CharVocabulary:
    """Characters of the training split. Ids: 0 pads, 1 unseen, 2 the [CLS] of BERTs.

    Args:
        texts: Training texts.
        min_count: Characters seen fewer times map to the unknown id.
        max_size: Keep at most this many characters (the most frequent).
    """

    PAD, UNKNOWN, CLS = 0, 1, 2

    def __init__(self, texts, *, min_count=2, max_size=6000):
        counts = collections.Counter(c for text in texts for c in text)
        kept = [c for c, n in counts.most_common(max_size) if n >= min_count]
        self.ids = {c: i + 3 for i, c in enumerate(kept)}

    def __len__(self):
        return len(self.ids) + 3

    def encode(self, texts, length, *, cls=False):
        """Returns an int32 `[len(texts), length]` array, truncated and padded."""
        out = np.zeros((len(texts), length), dtype="int32")
        for row, text in enumerate(texts):
            ids = ([self.CLS] if cls else []) + [self.ids.get(c, self.UNKNOWN) for c in text]
            ids = ids[:length]
            out[row, : len(ids)] = ids
        return out


def char_cnn(vocabulary_size, num_classes, *, length=160, embedding_dim=64, filters=128, dropout=0.2):
    """A small character-level CNN text classifier (Keras 3), trained from scratch."""
    import keras

    tokens = keras.Input((length,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocabulary_size, embedding_dim, name=EMBEDDING_NAMES["char-cnn"])(tokens)
    x = keras.layers.Conv1D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    x = keras.layers.Dropout(dropout)(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(tokens, logits, name="char_cnn")


def _kerashub_bert(vocabulary_size, num_classes, length):
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size, max_sequence_length=length, **TINY_BERT
    )
    return keras_hub.models.BertTextClassifier(backbone, num_classes=num_classes, preprocessor=None)


def _bert4keras_bert(vocabulary_size, num_classes, length):
    from bert4keras.backend import keras
    from bert4keras.models import build_transformer_model

    config = os.path.join(os.path.dirname(__file__), "tiny_bert_config.json")
    bert = build_transformer_model(
        config, checkpoint_path=None, vocab_size=vocabulary_size, max_position_embeddings=length
    )
    cls = keras.layers.Lambda(lambda x: x[:, 0], name="CLS-token")(bert.output)
    return keras.models.Model(bert.input, keras.layers.Dense(num_classes, name="logits")(cls))


def build_model(name, vocabulary_size, num_classes, length):
    """Builds model `name` (see `EMBEDDING_NAMES`), returning logits."""
    if name == "char-cnn":
        return char_cnn(vocabulary_size, num_classes, length=length)
    if name == "kerashub-bert":
        return _kerashub_bert(vocabulary_size, num_classes, length)
    return _bert4keras_bert(vocabulary_size, num_classes, length)


def encode(name, vocabulary, texts, length):
    """The model's inputs for `texts`."""
    if name == "char-cnn":
        return vocabulary.encode(texts, length)
    ids = vocabulary.encode(texts, length, cls=True)
    if name == "kerashub-bert":
        return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": (ids != 0).astype("int32")}
    return [ids.astype("float32"), np.zeros(ids.shape, "float32")]  # bert4keras: float ids
