"""A step that raises half-way leaves every weight as it was, on every stack.

Stack-neutral, like tests/closed_form.py: each stack's test folder runs
`FailingStepTests` with the compile modes that stack has.
"""

import keras
import numpy as np
import pytest

import keras_adv
from tests.models import batch, compile_sgd
from tests.testing import TestCase

LIMIT = 50.0


def _check(largest):
    if float(np.asarray(largest)) > LIMIT:
        raise RuntimeError("perturbed pass failed")


def _backend():
    # tf-keras has no `keras.backend.backend()` of Keras 3's kind.
    return keras.backend.backend() if hasattr(keras, "ops") else "tensorflow"


class RaiseOnPerturbedPass(keras.layers.Layer):
    """Fails whenever an embedding output exceeds `LIMIT` (a perturbed pass
    with a huge epsilon), eagerly or inside a compiled step."""

    def call(self, inputs):
        if _backend() == "jax":
            import jax

            jax.debug.callback(_check, keras.ops.max(keras.ops.abs(inputs)))
            return inputs
        if _backend() == "torch":
            _check(keras.ops.convert_to_numpy(keras.ops.max(keras.ops.abs(inputs))))
            return inputs
        import tensorflow as tf

        largest = tf.reduce_max(tf.abs(inputs))
        if tf.executing_eagerly():
            _check(largest)
            return inputs
        check = tf.debugging.Assert(largest < LIMIT, ["perturbed pass failed"])
        with tf.control_dependencies([check]):
            return tf.identity(inputs)


def checked_text_model():
    tokens = keras.Input((5,), dtype="int32")
    embedded = keras.layers.Embedding(20, 4, name="emb")(tokens)
    checked = RaiseOnPerturbedPass()(embedded)
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(checked))
    return keras.Model(tokens, logits)


class FailingStepTests(TestCase):
    # The compile arguments of each mode the stack runs steps in.
    modes = [{}, {"run_eagerly": True}]
    # How the failing step is run: "fit" or "train_on_batch".
    run_failing_step = "fit"

    # PGD fails in its first perturbed pass, before any pass that the
    # in-graph restore waits for: only the undo on failure can put the rows back.
    @pytest.mark.parametrize("method", ["fgm", "pgd", "awp"])
    def test_weights_are_as_before_the_failing_step(self, method):
        # Each perturbs the embedding outputs beyond LIMIT: epsilon=1000, or
        # AWP's box of 1e5 times each entry of the matrices (about 0.05).
        failing = dict(fgm=("emb", dict(epsilon=1000.0)),
                       pgd=("emb", dict(epsilon=1000.0, alpha=400.0)),
                       awp=(None, dict(method=keras_adv.AWP(alpha=1e5, epsilon=1e5))))
        embedding, options = failing[method]
        options = dict(dict(method=method), **options)
        for mode in self.modes:
            self.setup_method(None)
            model = compile_sgd(checked_text_model(), **mode)
            x, y = batch()
            model.fit(x, y, epochs=1, verbose=0)  # A plain step works.
            before = model.get_weights()
            keras_adv.adversarial_training(model, embedding, **options)
            with pytest.raises(Exception, match="perturbed pass failed"):
                if self.run_failing_step == "fit":
                    model.fit(x, y, epochs=1, verbose=0)
                else:
                    model.train_on_batch(x, y)
            self.assertWeightsBitEqual(model.get_weights(), before)

            # Training goes on from there, with a sane epsilon.
            keras_adv.adversarial_training(model, embedding, 0.1, method=method)
            model.fit(x, y, epochs=1, verbose=0)
            assert abs(model.get_weights()[0] - before[0]).max() > 0
