"""The closed-form checks (tests/closed_form.py) on tf-keras with eager execution disabled."""

import pytest

import keras_adv
from tests.closed_form import (
    AWPTests, BadScheduleTests, RelativeSizeTests, EquivalenceTests, FgsmClosedFormTests, FreeLBTests, GradientPenaltyTests, OneStepClosedFormTests,
    NEFTuneTests, PerExampleClosedFormTests, RDropTests, VATTests, WarmUpAndScheduleTests,
)
from tests.testing import TestCase


class TestOneStepClosedForm(OneStepClosedFormTests):
    history_has_adversarial_loss = False


class TestEquivalences(EquivalenceTests):
    pass


class TestPerExampleClosedForm(PerExampleClosedFormTests):
    pass


class TestFgsmClosedForm(FgsmClosedFormTests):
    pass


class TestWarmUpAndSchedule(WarmUpAndScheduleTests):
    counts_traces = False


class TestGradientPenalty(GradientPenaltyTests):
    history_name = None  # Graph mode's History has the compiled metrics only.


class TestFreeLB(FreeLBTests):
    history_has_adversarial_loss = False


class TestAWP(AWPTests):
    regularizers_read_the_perturbed_copy = False
    history_has_adversarial_loss = False  # Graph mode's History has the compiled metrics only.
    counts_traces = False


class TestVAT(VATTests):
    history_has_divergence = False  # Graph mode's History has the compiled metrics only.
    counts_traces = False


class TestAWPPassCount(TestCase):
    """With eager execution disabled, AWP's update reads the clean gradient
    it already took: a step runs two forward and two backward passes, the
    matrix products of two plain steps, with either objective."""

    def _matmuls_per_step(self, options):
        import collections

        import keras
        import numpy as np
        import tensorflow as tf

        import keras_adv

        self.setup_method(None)
        tokens = keras.Input((5,), dtype="int32")
        hidden = keras.layers.Flatten()(keras.layers.Embedding(20, 8)(tokens))
        for width in (16, 16):
            hidden = keras.layers.Dense(width, activation="tanh")(hidden)
        model = keras.Model(tokens, keras.layers.Dense(3)(hidden))
        metadata = tf.compat.v1.RunMetadata()
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            optimizer=keras.optimizers.legacy.SGD(0.1),
            options=tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE),
            run_metadata=metadata,
        )
        if options is not None:
            keras_adv.adversarial_training(model, method="awp", **options)
        x = np.random.RandomState(0).randint(0, 20, (8, 5)).astype("int32")
        model.fit(x, np.arange(8) % 3, batch_size=8, epochs=1, verbose=0)
        counts = collections.Counter(
            "MatMul" in node.timeline_label for device in metadata.step_stats.dev_stats for node in device.node_stats
        )
        return counts[True]

    def test_two_plain_steps_of_matrix_products(self):
        plain = self._matmuls_per_step(None)
        assert plain > 0
        for objective in ("sum", "adversarial"):
            assert self._matmuls_per_step(dict(objective=objective)) == 2 * plain, objective


class TestBadSchedule(BadScheduleTests):
    pass


class TestRelativeSize(RelativeSizeTests):
    pass


class TestNEFTune(NEFTuneTests):
    history_has_noisy_loss = False


class TestRDrop(RDropTests):
    history_has_divergence = False  # Graph mode's History has the compiled metrics only.

    def test_under_a_graph_seed_dropout_draws_one_mask_and_the_error_says_so(self):
        # Under the graph-level seed that the test case sets, tf-keras's dropout
        # gets the same seeds in both passes. R-Drop raises, naming the seed,
        # and changes no weight.
        import keras

        from tests.models import CLASSES, LENGTH, VOCAB, batch, params_of, sgd

        tokens = keras.Input((LENGTH,), dtype="int32")
        pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(VOCAB, 8)(tokens))
        model = keras.Model(tokens, keras.layers.Dense(CLASSES)(keras.layers.Dropout(0.5)(pooled)))
        model.compile(optimizer=sgd(0.5), loss="sparse_categorical_crossentropy")
        before = params_of(model)
        keras_adv.adversarial_training(model, method="rdrop")
        with pytest.raises(Exception, match="(?s)identical outputs.*graph-level seed"):
            model.fit(*batch(), epochs=1, verbose=0)
        self.assertWeightsBitEqual(params_of(model), before)
