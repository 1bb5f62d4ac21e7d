"""Shared test base (keras-rs style): a clean session per test, numeric asserts."""

import numpy as np


def to_numpy(x):
    if hasattr(x, "numpy"):
        return x.numpy()
    return np.asarray(x)


def vocabulary_sized_ops(model, data, vocab):
    """Counts, by op type, the float outputs of `vocab` rows in the traced train step.

    Args:
        model: A compiled model (its `train_step` is traced, not run).
        data: An `(x, y)` batch of numpy arrays (`x` may be a list).
        vocab: The embedding's vocabulary size.
    """
    return vocabulary_sized_ops_in(train_step_graph(model, data), vocab)


def train_step_graph(model, data):
    """The graph of `model.train_step` traced on `data` (numpy arrays), not run."""
    import tensorflow as tf

    data = tf.nest.map_structure(tf.constant, tuple(data))
    return tf.function(model.train_step).get_concrete_function(data).graph


def vocabulary_sized_ops_in(graph, vocab):
    """Counts, by op type, the float outputs of `vocab` rows in a traced `graph`."""
    from collections import Counter

    import tensorflow as tf

    return Counter(
        op.type
        for op in graph.get_operations()
        for out in op.outputs
        if out.dtype == tf.float32 and out.shape.as_list()[:1] == [vocab]
    )


def execution_modes():
    """The compile arguments of each way Keras 3 runs steps on this backend,
    besides the default. PyTorch: Keras runs one step per call, and keras_adv
    refuses `torch.compile` (`jit_compile=True`) with an error (test_api)."""
    import keras

    if keras.backend.backend() == "torch":
        return [dict(run_eagerly=True)]
    return [dict(run_eagerly=True), dict(jit_compile=True), dict(steps_per_execution=3)]


class TestCase:
    """Base class for keras_adv tests: each test starts from a clean Keras session."""

    seed = 0

    def setup_method(self, method):
        import keras

        keras.backend.clear_session()
        keras.utils.set_random_seed(self.seed)

    def assertAllClose(self, actual, expected, rtol=1e-6, atol=1e-6, msg=""):
        np.testing.assert_allclose(
            to_numpy(actual), to_numpy(expected), rtol=rtol, atol=atol, err_msg=msg
        )

    def assertBitEqual(self, actual, expected, msg=""):
        """Asserts two float arrays are identical bit for bit (-0.0 != 0.0)."""
        actual, expected = to_numpy(actual), to_numpy(expected)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, msg
        assert actual.tobytes() == expected.tobytes(), msg or "arrays differ in bits"

    def assertWeightsBitEqual(self, actual_list, expected_list):
        assert len(actual_list) == len(expected_list)
        for actual, expected in zip(actual_list, expected_list):
            self.assertBitEqual(actual, expected)
