"""Tiny random-initialised models for the tests.

`keras` is whichever Keras the test process uses: Keras 3, or tf-keras in the
tf-keras processes (where bert4keras has put `tf.keras` under that name).
"""

import keras
import numpy as np

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
    if not hasattr(keras, "ops"):  # tf-keras (Keras 3 has `keras.ops`).
        import tensorflow as tf

        if not tf.executing_eagerly():
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


# A large vocabulary, whose size no other axis of a step has (the V x d checks).
LARGE_VOCAB, LARGE_VOCAB_DIM, LARGE_VOCAB_LENGTH = 1000, 8, 6
LARGE_VOCAB_METHODS = {
    "fgm": dict(method="fgm"),
    "pgd": dict(method="pgd", steps=3, alpha=0.2),
    "fgm per example": dict(method="fgm", per_example=True),
}


def large_vocabulary_model():
    """`linear_text_model` with `LARGE_VOCAB` tokens, compiled with Adam."""
    return compile_adam(
        linear_text_model(vocab=LARGE_VOCAB, dim=LARGE_VOCAB_DIM, length=LARGE_VOCAB_LENGTH)
    )


def large_vocabulary_batch(size=4):
    return batch(size=size, vocab=LARGE_VOCAB, length=LARGE_VOCAB_LENGTH)


# Dropout made predictable, for R-Drop's closed form: the masks that training
# calls take in turn (inverted dropout of half the features).
MASKS = np.array([[2.0, 0.0, 2.0, 0.0], [0.0, 2.0, 2.0, 0.0]])


class AlternatingMask(keras.layers.Layer):
    """In training, the n-th call multiplies its inputs by `MASKS[n % 2]`;
    otherwise the identity. In a compiled step the n-th call is the n-th
    traced, so R-Drop's two passes get the two masks on every stack. In a TF1
    graph, where each replica's clone builds its own model graph (its first
    pass) before any train function, a pass built in the train function's
    "training" scope takes the second mask, any other the first."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.training_calls = 0

    def _next_mask(self):
        if not hasattr(keras, "ops"):  # tf-keras
            import tensorflow as tf

            if not tf.compat.v1.executing_eagerly_outside_functions():  # A TF1 graph.
                scope = tf.compat.v1.get_default_graph().get_name_scope().split("/")
                return MASKS[int(any(part.startswith("training") for part in scope))].astype("float32")
        mask = MASKS[self.training_calls % 2].astype("float32")
        self.training_calls += 1
        return keras.ops.convert_to_tensor(mask) if hasattr(keras, "ops") else mask

    def call(self, inputs, training=None):
        if training is None and not hasattr(keras, "ops"):  # tf-keras: its learning phase.
            training = keras.backend.learning_phase()
        if training is None or isinstance(training, (bool, int)):
            return inputs * self._next_mask() if training else inputs
        import tensorflow as tf  # A TF1 graph's learning phase, a tensor.

        mask = self._next_mask()
        return tf.cond(tf.cast(training, tf.bool), lambda: inputs * mask, lambda: inputs)


def masked_text_model(vocab=VOCAB, dim=DIM, classes=CLASSES, length=LENGTH):
    """`linear_text_model` with an `AlternatingMask` on the pooled embedding."""
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(
        vocab, dim, name="emb", embeddings_initializer=keras.initializers.RandomNormal(stddev=0.5)
    )(tokens)
    pooled = AlternatingMask(name="mask")(keras.layers.GlobalAveragePooling1D(name="pool")(embedded))
    logits = keras.layers.Dense(
        classes, name="dense", bias_initializer=keras.initializers.RandomNormal(stddev=0.1)
    )(pooled)
    return keras.Model(tokens, logits, name="masked_text")
