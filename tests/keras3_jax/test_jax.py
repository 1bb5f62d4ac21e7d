"""What is particular to Keras 3 on JAX: one trace per `fit`, the error with
Flax NNX, and what Keras itself does with the weights when a step raises."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_adv
from tests.failing_step import checked_text_model
from tests.models import batch, compile_sgd, linear_text_model
from tests.testing import TestCase

assert keras.backend.backend() == "jax", "run this folder with KERAS_BACKEND=jax"


class TestJaxStep(TestCase):
    @pytest.mark.parametrize("options", [dict(method="pgd"), dict(per_example=True, start_step=2)])
    def test_the_step_is_traced_once_per_fit(self, options):
        model = compile_sgd(linear_text_model())
        keras_adv.adversarial_training(model, "emb", 0.5, **options)
        traces, step = [], model.train_step
        model.train_step = lambda state, data: traces.append(1) or step(state, data)
        model.fit(*batch(size=24), batch_size=8, epochs=3, verbose=0)
        assert len(traces) == 1  # 9 steps, one trace: a pure function of its state.

    def test_flax_nnx_is_refused_at_the_call(self):
        script = textwrap.dedent(
            """
            import keras, keras_adv
            tokens = keras.Input((5,), dtype="int32")
            h = keras.layers.Embedding(20, 4, name="emb")(tokens)
            model = keras.Model(tokens, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
            model.compile(optimizer="sgd", loss="mse")
            assert keras.config.is_nnx_enabled()
            try:
                keras_adv.adversarial_training(model, "emb")
            except NotImplementedError as error:
                print("NotImplementedError:", error)
            """
        )
        env = dict(os.environ, KERAS_BACKEND="jax", KERAS_NNX_ENABLED="true")
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert "NotImplementedError: keras_adv does not support the JAX backend with Flax NNX" in out
        assert "type(model).train_step" in out

    def test_keras_loses_the_weights_of_a_plain_model_whose_step_raises(self):
        # Why tests/failing_step.py runs the failing step eagerly through
        # `train_on_batch` on JAX: `fit` moves the weights out of the model's
        # variables while it trains, and a compiled step is given (donated)
        # their buffers, so after a raising step they are gone, keras_adv or not.
        model = compile_sgd(checked_text_model())
        x, y = batch()
        model.fit(x, y, verbose=0)
        weights = model.get_weights()
        model.get_layer("emb").embeddings.assign(np.full_like(weights[0], 100.0))  # Every step raises.
        with pytest.raises(Exception, match="perturbed pass failed"):
            model.fit(x, y, verbose=0)
        with pytest.raises(Exception):
            np.asarray(model.get_weights()[0])


class TestNoCustomLoopBlock(TestCase):
    def test_perturbed_embedding_is_refused_with_what_works(self):
        import jax.numpy as jnp

        model = linear_text_model()
        with pytest.raises(NotImplementedError, match="stateless_call.*never written"):
            with keras_adv.perturbed_embedding(model, "emb", jnp.ones((20, 4)), 0.5):
                pass
