"""Models for the ablation runner, each with its token embedding named
`EMBEDDING_NAME` so that the keras_adv one line applies unchanged."""

import collections

import numpy as np

__all__ = ["CharVocabulary", "char_cnn", "EMBEDDING_NAME"]

EMBEDDING_NAME = "embedding"


class CharVocabulary:
    """Characters of the training split; id 0 pads, id 1 stands for unseen characters.

    Args:
        texts: Training texts.
        min_count: Characters seen fewer times map to the unknown id.
        max_size: Keep at most this many characters (the most frequent).
    """

    PAD, UNKNOWN = 0, 1

    def __init__(self, texts, *, min_count=2, max_size=6000):
        counts = collections.Counter(c for text in texts for c in text)
        kept = [c for c, n in counts.most_common(max_size) if n >= min_count]
        self.ids = {c: i + 2 for i, c in enumerate(kept)}

    def __len__(self):
        return len(self.ids) + 2

    def encode(self, texts, length):
        """Returns an int32 `[len(texts), length]` array, truncated and padded."""
        out = np.zeros((len(texts), length), dtype="int32")
        for row, text in enumerate(texts):
            ids = [self.ids.get(c, self.UNKNOWN) for c in text[:length]]
            out[row, : len(ids)] = ids
        return out


def char_cnn(vocabulary_size, num_classes, *, length=160, embedding_dim=64, filters=128, dropout=0.2):
    """A small character-level CNN text classifier (Keras 3), trained from scratch."""
    import keras

    tokens = keras.Input((length,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocabulary_size, embedding_dim, name=EMBEDDING_NAME)(tokens)
    x = keras.layers.Conv1D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    x = keras.layers.Dropout(dropout)(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(tokens, logits, name="char_cnn")
