"""No autodiff work that is not needed, on Keras 3 with TensorFlow: each
pass asks for only the gradients it uses, counted in the traced step's graph,
and the embedding's gradient reaches the optimizer as sparse rows."""

import keras
import pytest
import tensorflow as tf

import keras_adv
from tests.models import batch, compile_sgd, linear_text_model
from tests.testing import TestCase


def _count_matmuls(model, x, y):
    """MatMul ops in the traced train step: one per weight/input gradient product."""
    step = tf.function(model.train_step)
    graph = step.get_concrete_function((tf.constant(x), tf.constant(y))).graph
    return sum(op.type == "MatMul" for op in graph.get_operations())


class TestNoWastedPass(TestCase):
    # The Dense layer costs one MatMul forward, one for dW and one for the
    # input gradient (needed on the way back to the embedding). A pass that
    # only needs the embedding gradient must skip dW.
    @pytest.mark.parametrize(
        "options,expected",
        [
            (dict(method="fgm", objective="sum"), 3 + 3),
            (dict(method="fgm", objective="adversarial"), 2 + 3),
            (dict(method="pgd", steps=3, objective="sum"), 3 + 2 * 2 + 3),
            (dict(method="pgd", steps=3, objective="adversarial"), 2 + 2 * 2 + 3),
        ],
    )
    def test_only_the_gradients_each_pass_needs(self, options, expected):
        model = compile_sgd(linear_text_model())
        x, y = batch()
        assert _count_matmuls(model, x, y) == 3  # The plain step.
        keras_adv.adversarial_training(model, "emb", 0.5, **options)
        assert _count_matmuls(model, x, y) == expected

    def test_embedding_gradient_reaches_the_optimizer_sparse(self):
        seen = []

        class RecordingSGD(keras.optimizers.SGD):
            def apply(self, grads, trainable_variables=None):
                seen.extend(type(g).__name__ for g in grads)
                return super().apply(grads, trainable_variables)

        model = linear_text_model()
        model.compile(
            optimizer=RecordingSGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        keras_adv.adversarial_training(model, "emb", 0.5)
        model.fit(*batch(), epochs=1, verbose=0)
        assert seen[0] == "IndexedSlices"
