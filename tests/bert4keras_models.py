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


def awp_step_on_written_weights(model, x, y, lr, alpha, epsilon, objective):
    """One SGD step of AWP the way the public implementations take it: the
    clean gradient g, then w + r written into each weight matrix (r =
    alpha * ||w|| * g / ||g||, clipped into [-epsilon |w|, epsilon |w|]),
    the gradient g' read there, the originals written back; the update
    w - lr * (g + g') ("sum") or w - lr * g' ("adversarial"), in numpy.

    Returns the trainable weights after the step, and leaves the model's as
    they were. Eager or with eager execution disabled (through K.function).
    """
    import tensorflow as tf
    from bert4keras.backend import K

    weights = model.trainable_weights
    if tf.executing_eagerly():
        def gradients():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)))
            return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, weights)]
    else:
        inputs = model._feed_inputs + model._feed_targets + model._feed_sample_weights
        dense = [K.zeros_like(w) + g for w, g in zip(weights, K.gradients(model.total_loss, weights))]
        function = K.function(inputs, dense)

        def gradients():
            return function(list(x) + [y, np.ones(len(y), "float32")])

    originals = [K.eval(w) for w in weights]
    clean = gradients()
    for w, value, g in zip(weights, originals, clean):
        if len(value.shape) >= 2:
            r = alpha * np.linalg.norm(value) * g / np.linalg.norm(g)
            K.set_value(w, value + np.clip(r, -epsilon * np.abs(value), epsilon * np.abs(value)))
    perturbed = gradients()
    for w, value in zip(weights, originals):
        K.set_value(w, value)
    if objective == "adversarial":
        return [value - lr * g for value, g in zip(originals, perturbed)]
    return [value - lr * (g + p) for value, g, p in zip(originals, clean, perturbed)]


# The `extend_with_*` wrappers of bert4keras's examples, each with settings
# that act within three steps.
BERT4KERAS_WRAPPERS = {
    "weight_decay": dict(weight_decay_rate=0.1, exclude_from_weight_decay=["bias"]),
    "piecewise_linear_lr": dict(lr_schedule={1: 1.0, 3: 0.1}),
    "gradient_accumulation": dict(grad_accum_steps=2),  # Updates at steps 0 and 2.
    "exponential_moving_average": dict(ema_momentum=0.9),
}


def bert4keras_optimizer(name, lr=0.01):
    """A new bert4keras optimizer (after `keras_adv.prepare_bert4keras()`):
    `"adam"`, `"adafactor"`, or `"wrapped adam"`, Adam inside every one of
    `BERT4KERAS_WRAPPERS` (as its examples stack them)."""
    import tensorflow as tf
    from bert4keras import optimizers

    if name == "adam":
        return optimizers.Adam(lr)
    if name == "adafactor":
        # With a number for its rate, bert4keras's AdaFactor makes a variable
        # on every read of it, which an eager tf-keras `fit` refuses on one
        # device too (upstream); without one it follows its own schedule.
        return optimizers.AdaFactor(learning_rate=None if tf.executing_eagerly() else lr)
    assert name == "wrapped adam", name
    optimizer, options = optimizers.Adam, {}
    for wrapper, settings in BERT4KERAS_WRAPPERS.items():
        optimizer = getattr(optimizers, f"extend_with_{wrapper}")(optimizer, name=f"Adam_{wrapper}")
        options.update(settings)
    return optimizer(learning_rate=lr, **options)
