"""Tiny random-initialised models for the tests.

`keras` is whichever Keras the test process uses: Keras 3, or tf-keras in the
tf-keras processes (where bert4keras has put `tf.keras` under that name).
"""

import keras
import numpy as np
import tensorflow as tf

VOCAB, DIM, CLASSES, LENGTH = 20, 4, 3, 5


def linear_text_model(vocab=VOCAB, dim=DIM, classes=CLASSES, length=LENGTH):
    """Embedding -> mean over tokens -> Dense logits: the model of tests/reference.py."""
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(
        vocab, dim, name="emb", embeddings_initializer=keras.initializers.RandomNormal(stddev=0.5)
    )(tokens)
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(embedded)
    logits = keras.layers.Dense(
        classes, name="dense", bias_initializer=keras.initializers.RandomNormal(stddev=0.1)
    )(pooled)
    return keras.Model(tokens, logits, name="linear_text")


def sgd(lr):
    """Plain SGD; tf-keras with eager execution disabled needs its legacy one."""
    if not tf.executing_eagerly() and hasattr(keras.optimizers, "legacy"):
        return keras.optimizers.legacy.SGD(learning_rate=lr)
    return keras.optimizers.SGD(learning_rate=lr)


def compile_sgd(model, lr=0.1, **kwargs):
    model.compile(
        optimizer=sgd(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )
    return model


def compile_adam(model, lr=1e-3, **kwargs):
    # Adam updates the matrix densely; Keras 3's SGD writes it sparsely
    # (`scatter_sub`), which switches it to copy-on-read.
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )
    return model


def batch(size=8, vocab=VOCAB, length=LENGTH, classes=CLASSES, seed=1):
    """Token ids with repeated tokens within and across rows, and labels."""
    rng = np.random.RandomState(seed)
    x = rng.randint(0, vocab // 2, size=(size, length)).astype("int32")
    y = rng.randint(0, classes, size=(size,)).astype("int32")
    return x, y


def params_of(model):
    """[E, W, b] as float64 numpy arrays, the order of tests/reference.py."""
    return [np.asarray(v, dtype="float64") for v in model.get_weights()]
