"""Under MirroredStrategy, adversarial training gives the single-device result.

Stack-neutral, like tests/closed_form.py: each mirrored test folder runs these
classes in a process of its own, whose conftest splits the CPU into two
logical devices before TensorFlow initialises.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_adv
from tests import failing_step
from tests.models import batch, compile_sgd, linear_text_model, masked_text_model
from tests.testing import TestCase

GLOBAL_BATCH, STEPS, LR = 8, 3, 0.5
DEVICES = ["/cpu:0", "/cpu:1"]
_MIRRORED = []


def mirrored_strategy():
    """The process's one MirroredStrategy over the two logical CPUs.

    One per process: each new strategy numbers its collective ops from the
    same keys, and a later one's all-gathers then meet an earlier one's.
    """
    if not _MIRRORED:
        _MIRRORED.append(tf.distribute.MirroredStrategy(DEVICES))
    return _MIRRORED[0]
CASES = [
    ("fgm", dict(epsilon=0.7), "sum"),
    ("fgm", dict(epsilon=0.7), "adversarial"),
    ("pgd", dict(epsilon=0.7, alpha=0.3, steps=3), "sum"),
    ("pgd", dict(epsilon=0.2, alpha=0.15, steps=4), "adversarial"),
    ("fgm", dict(epsilon=0.7, per_example=True), "sum"),
    ("pgd", dict(epsilon=0.2, alpha=0.15, steps=4, per_example=True, relative_epsilon=True), "sum"),
    ("fgsm", dict(epsilon=0.1, relative_epsilon=True), "adversarial"),
    # With a random start: each replica takes its share of the global
    # batch's noise, as VAT's. Relative sizes: each example's own norm.
    (keras_adv.FreeLB(alpha=0.15, epsilon=0.2, steps=3, init_magnitude=0.5), dict(relative_epsilon=True), "sum"),
    ("vat", dict(epsilon=0.7, steps=2, relative_epsilon=True), "sum"),
    # Each replica's share of the global batch's noise.
    ("neftune", dict(alpha=5.0), "sum"),
    # On a model whose two passes take known, different masks.
    ("rdrop", dict(alpha=4.0), "sum"),
]


# What `MirroredParityTests` compares with, computed once per process.
_SINGLE_DEVICE = {}


def replica_values(variable, strategy):
    """Each replica's copy of a (Keras 3 or tf-keras) variable, as numpy."""
    if not isinstance(variable, tf.Variable):
        variable = variable.value  # A Keras 3 variable wraps the tf one.
    copies = list(strategy.experimental_local_results(variable))
    if not tf.executing_eagerly():  # tf-keras with eager execution disabled: its session.
        return [np.array(v) for v in keras.backend.batch_get_value(copies)]
    return [np.array(v) for v in copies]


class MirroredParityTests(TestCase):
    history_has_adversarial_loss = True  # Not in tf-keras's graph-mode History.
    # The step switches from the warm-up with a `tf.cond` (not in graph mode).
    refuses_start_step_with_rows = True

    def _train(self, strategy, method, options, objective, line_in_scope):
        """Weights and History after STEPS steps of GLOBAL_BATCH examples."""
        self.setup_method(None)
        x, y = batch(size=GLOBAL_BATCH * STEPS, seed=3)
        embedding = None if method in ("awp", "rdrop") else "emb"  # They perturb no embedding.
        with strategy.scope():
            # R-Drop's two passes take tests/models.py's known masks on each replica.
            model = compile_sgd(masked_text_model() if method == "rdrop" else linear_text_model(), lr=LR)
            if line_in_scope:
                keras_adv.adversarial_training(model, embedding, method=method, objective=objective, **options)
        if not line_in_scope:
            keras_adv.adversarial_training(model, embedding, method=method, objective=objective, **options)
        history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        return model, history.history

    @pytest.mark.parametrize("line_in_scope", [True, False], ids=["line in scope", "line outside scope"])
    @pytest.mark.parametrize("method,options,objective", CASES)
    def test_two_replicas_give_the_single_device_result(self, method, options, objective, line_in_scope):
        self._assert_single_device_result(method, options, objective, line_in_scope)

    @pytest.mark.parametrize("objective", ["sum", "adversarial"])
    def test_awp_gives_the_single_device_result(self, objective):
        options = dict(epsilon=0.1, alpha=0.5, steps=2)
        self._assert_single_device_result("awp", options, objective, line_in_scope=False)

    def _assert_single_device_result(self, method, options, objective, line_in_scope):
        mirrored = mirrored_strategy()
        assert mirrored.num_replicas_in_sync == 2
        model, history = self._train(mirrored, method, options, objective, line_in_scope)
        # Read before the next model's `clear_session` (a new graph in graph mode).
        copies = [replica_values(variable, mirrored) for variable in model.weights]
        expected, single = self._single_device(method, options, objective)
        for replicas, want in zip(copies, expected):
            for replica in replicas:  # Every replica agrees.
                self.assertAllClose(replica, want, rtol=1e-5, atol=5e-6)  # Summed in another order across replicas.
        self.assertAllClose(history["loss"], single["loss"], rtol=1e-5)
        name = dict(vat="vat_divergence", rdrop="rdrop_divergence", neftune=None).get(method, "adversarial_loss")
        if self.history_has_adversarial_loss and name is not None:
            self.assertAllClose(history[name], single[name], rtol=1e-5)
        # The perturbation mattered: plain training lands elsewhere.
        assert np.abs(self._plain()[0] - expected[0]).max() > 1e-3

    def _single_device(self, method, options, objective):
        """The single-device weights and History of a case (the same wherever
        the line was called), trained once per process: every training
        starts from `setup_method`'s seeds."""
        key = repr((method, sorted(options.items()), objective))
        if key not in _SINGLE_DEVICE:
            model, history = self._train(tf.distribute.get_strategy(), method, options, objective, True)
            _SINGLE_DEVICE[key] = (model.get_weights(), history)
        return _SINGLE_DEVICE[key]

    def _plain(self):
        """The weights of plain training on the cases' data, trained once per process."""
        if "plain" not in _SINGLE_DEVICE:
            self.setup_method(None)
            plain = compile_sgd(linear_text_model(), lr=LR)
            x, y = batch(size=GLOBAL_BATCH * STEPS, seed=3)
            plain.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
            _SINGLE_DEVICE["plain"] = plain.get_weights()
        return _SINGLE_DEVICE["plain"]

    def test_start_step_per_example_gives_the_single_device_result(self):
        results = []
        for strategy in (mirrored_strategy(), tf.distribute.get_strategy()):
            model, history = self._train(
                strategy, "fgm", dict(epsilon=0.7, per_example=True, start_step=1), "sum", True
            )
            results.append((model.get_weights(), history))
        (mirrored, history), (single, single_history) = results
        for a, b in zip(mirrored, single):
            self.assertAllClose(a, b, rtol=1e-5, atol=2e-6)
        if self.history_has_adversarial_loss:
            self.assertAllClose(history["adversarial_loss"], single_history["adversarial_loss"], rtol=1e-5)

    @pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
    def test_gradient_penalty_per_example_gives_the_single_device_result(self, relative):
        results = []
        for strategy in (mirrored_strategy(), tf.distribute.get_strategy()):
            penalty = dict(per_example=True, relative_epsilon=relative)
            model, history = self._train(
                strategy, keras_adv.GradientPenalty(weight=0.5 if relative else 30.0), penalty, "sum", True
            )
            results.append((model.get_weights(), history))
        (mirrored, history), (single, single_history) = results
        for a, b in zip(mirrored, single):
            self.assertAllClose(a, b, rtol=1e-5, atol=2e-6)
        if self.history_has_adversarial_loss:
            self.assertAllClose(history["gradient_penalty"], single_history["gradient_penalty"], rtol=1e-5)

    def test_gradient_penalty_on_the_matrix_is_refused_across_replicas(self):
        with mirrored_strategy().scope():
            model = compile_sgd(linear_text_model(), lr=LR)
        before = model.get_weights()
        keras_adv.adversarial_training(model, "emb", method="gradient_penalty")
        with pytest.raises(NotImplementedError, match="per_example=True"):
            model.fit(*batch(size=GLOBAL_BATCH), batch_size=GLOBAL_BATCH, verbose=0)
        self.assertWeightsBitEqual(model.get_weights(), before)

    def test_start_step_with_the_matrix_rows_across_replicas(self):
        """Refused where a `tf.cond` switches from the warm-up; else as on one device."""
        if not self.refuses_start_step_with_rows:
            # No tf.cond there: the warm-up weighs the perturbed passes 0.
            self._assert_single_device_result("fgm", dict(epsilon=0.7, start_step=1), "sum", True)
            return
        with mirrored_strategy().scope():
            model = compile_sgd(linear_text_model(), lr=LR)
        before = model.get_weights()
        keras_adv.adversarial_training(model, "emb", 0.7, start_step=1)
        with pytest.raises(NotImplementedError, match="per_example=True"):
            model.fit(*batch(size=GLOBAL_BATCH), batch_size=GLOBAL_BATCH, verbose=0)
        self.assertWeightsBitEqual(model.get_weights(), before)

    def test_a_replica_that_raises_leaves_every_copy_as_it_was(self):
        mirrored = mirrored_strategy()
        x, y = batch(size=GLOBAL_BATCH)
        with mirrored.scope():
            model = compile_sgd(failing_step.checked_text_model())
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0)  # A plain step works.
        before = [replica_values(v, mirrored) for v in model.weights]
        # epsilon=1000 makes the perturbed pass of every replica raise.
        keras_adv.adversarial_training(model, "emb", 1000.0, method="pgd", alpha=400.0)
        with pytest.raises(Exception, match="perturbed pass failed"):
            model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
        for variable, copies in zip(model.weights, before):
            for replica, was in zip(replica_values(variable, mirrored), copies):
                self.assertBitEqual(replica, was)


# bert4keras's optimizers, each with a method (AWP and per-example ones too):
# their step count, which the passes read, is what broke them under
# MirroredStrategy in eager mode (issue 25). "wrapped adam" has every wrapper
# of its examples (tests/bert4keras_models.py).
BERT4KERAS_CASES = [
    ("adam", "fgm", dict(epsilon=0.7)),
    ("adam", "awp", dict(epsilon=0.1, alpha=0.5, steps=1)),
    ("adafactor", "fgm", dict(epsilon=0.7, per_example=True)),
    ("wrapped adam", "fgm", dict(epsilon=0.7)),
]


class Bert4kerasOptimizerParityTests(TestCase):
    """bert4keras's optimizers under MirroredStrategy (tf-keras, eager or not):
    every replica's weights and optimizer state, and History, as on one device."""

    history_has_adversarial_loss = True  # Not in tf-keras's graph-mode History.

    def _train(self, strategy, optimizer, method, options):
        """The weights before, every replica's model and optimizer weights
        after STEPS steps, and History."""
        from tests.bert4keras_models import bert4keras_optimizer

        self.setup_method(None)
        x, y = batch(size=GLOBAL_BATCH * STEPS, seed=3)
        with strategy.scope():
            model = linear_text_model()
            model.compile(
                optimizer=bert4keras_optimizer(optimizer),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        before = model.get_weights()
        keras_adv.adversarial_training(model, None if method == "awp" else "emb", method=method, **options)
        history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        # The optimizer's weights: its step count and slots (Adam's moments,
        # EMA's averages, the accumulated gradients), read before the next
        # model's `clear_session`.
        after = [replica_values(v, strategy) for v in model.weights + model.optimizer.weights]
        return before, after, history.history

    @pytest.mark.parametrize("optimizer,method,options", BERT4KERAS_CASES)
    def test_bert4keras_optimizer_gives_the_single_device_result(self, optimizer, method, options):
        mirrored = mirrored_strategy()
        _, copies, history = self._train(mirrored, optimizer, method, options)
        before, single, single_history = self._train(tf.distribute.get_strategy(), optimizer, method, options)
        assert len(copies) == len(single) > len(before)  # The optimizer's weights are compared too.
        for replicas, [want] in zip(copies, single):
            for replica in replicas:
                self.assertAllClose(replica, want, rtol=1e-5, atol=5e-6)  # Summed in another order across replicas.
        # The weights moved (with gradient accumulation, at its second update).
        assert max(np.abs(w[0] - b).max() for w, b in zip(single, before)) > 1e-3
        names = ["loss", "adversarial_loss"] if self.history_has_adversarial_loss else ["loss"]
        for name in names:
            self.assertAllClose(history[name], single_history[name], rtol=1e-5)
