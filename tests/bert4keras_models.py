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


def tiny_unilm():
    """A bert4keras UniLM seq2seq model whose loss is added inside it by a
    `Loss` layer (compiled with an optimizer only), as bert4keras's seq2seq
    examples and many TF1-era notebooks build it."""
    from bert4keras.backend import K
    from bert4keras.layers import Loss
    from bert4keras.models import Model, build_transformer_model

    class CrossEntropy(Loss):
        """Next-token cross-entropy over the second segment (bert4keras's example)."""

        def compute_loss(self, inputs, mask=None):
            y_true, y_mask, y_pred = inputs
            y_true, y_mask, y_pred = y_true[:, 1:], y_mask[:, 1:], y_pred[:, :-1]
            loss = K.sparse_categorical_crossentropy(y_true, y_pred)
            return K.sum(loss * y_mask) / K.sum(y_mask)

    bert = build_transformer_model(CONFIG, checkpoint_path=None, application="unilm")
    output = CrossEntropy(2)(bert.inputs + bert.outputs)
    return Model(bert.inputs, output)


def seq2seq_batch(size=4, length=10, seed=0):
    """Token ids and segment ids (the second half is the target segment)."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(1, 60, size=(size, length)).astype("float32")
    segments = np.zeros((size, length), "float32")
    segments[:, length // 2 :] = 1
    return [tokens, segments]
