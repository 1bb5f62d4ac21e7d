"""A tiny random bert4keras BERT classifier (no download), for the tf-keras tests."""

import os

import numpy as np

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "tiny_bert_config.json")
VOCAB = 120


def tiny_bert_classifier(num_classes=2):
    """`build_transformer_model` from the tiny config, [CLS] -> softmax."""
    from bert4keras.backend import keras
    from bert4keras.models import build_transformer_model

    bert = build_transformer_model(CONFIG, checkpoint_path=None)
    cls = keras.layers.Lambda(lambda x: x[:, 0], name="CLS-token")(bert.output)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(cls)
    return keras.models.Model(bert.input, probabilities)


def token_batch(size=8, length=12, seed=0):
    """bert4keras's float token and segment ids, and labels; tokens below 60 only."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(1, 60, size=(size, length)).astype("float32")
    segments = np.zeros((size, length), "float32")
    return [tokens, segments], (np.arange(size) % 2).astype("int32")


def used_and_unused_rows(tokens):
    used = np.unique(tokens.astype("int64"))
    return used, np.setdiff1d(np.arange(VOCAB), used)
