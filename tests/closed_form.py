"""One SGD step of FGM and PGD against weights worked out by hand in numpy,
and the equivalences that tie the methods to plain training and to each other.

Stack-neutral: each stack's test folder runs these classes in its own process,
where `keras` (through tests/models.py) is that stack's Keras.
"""

import keras
import numpy as np
import pytest

import keras_adv
from tests import reference
from tests.models import DIM, MASKS, batch, compile_sgd, linear_text_model, masked_text_model, params_of
from tests.testing import TestCase

LR = 0.5
CASES = [
    ("fgm", dict(epsilon=0.7), "sum"),
    ("fgm", dict(epsilon=0.7), "adversarial"),
    ("pgd", dict(epsilon=0.7, alpha=0.3, steps=3), "sum"),
    ("pgd", dict(epsilon=0.7, alpha=0.3, steps=3), "adversarial"),
    # alpha * steps > epsilon: the projection is active.
    ("pgd", dict(epsilon=0.2, alpha=0.15, steps=4), "sum"),
]


def assert_beyond_plain(expected, before, x, y, margin=1e-3, clean_twice=False, **plain_options):
    """The method moved the step from `before` well beyond the tests'
    tolerance: a plain SGD step (of the clean gradient taken twice, with
    `clean_twice`) lands more than `margin` away from `expected`."""
    plain, _ = reference.plain_sgd_step(before, x, y, LR, **plain_options)
    if clean_twice:
        plain = [2 * p - b for p, b in zip(plain, before)]
    assert max(np.abs(e - p).max() for e, p in zip(expected, plain)) > margin


class OneStepClosedFormTests(TestCase):
    # tf-keras's graph-mode fit names its outputs after the compiled metrics only.
    history_has_adversarial_loss = True

    @pytest.mark.parametrize("method,options,objective", CASES)
    def test_weights_after_one_step(self, method, options, objective):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(
            model, "emb", method=method, objective=objective, **options
        )
        history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)

        expected, clean_loss, adversarial_loss = reference.adversarial_sgd_step(
            before, x, y, LR, method, objective=objective, **options
        )
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        # The step really moved the weights further than float noise.
        assert np.abs(expected[0] - before[0]).max() > 1e-3
        self.assertAllClose(history.history["loss"][0], clean_loss, rtol=1e-5)
        if self.history_has_adversarial_loss:
            self.assertAllClose(history.history["adversarial_loss"][0], adversarial_loss, rtol=1e-5)
        assert adversarial_loss > clean_loss

    def test_train_on_batch_returns_the_adversarial_loss_last(self):
        # On Keras 3 the model tracks keras_adv's adversarial-loss metric (a
        # pure JAX step can update only what the model tracks), so
        # `metrics_names` lists it; tf-keras's does not.
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", 0.7)
        values = np.atleast_1d(model.train_on_batch(x, y))
        _, clean_loss, adversarial_loss = reference.adversarial_sgd_step(
            before, x, y, LR, "fgm", 0.7, "sum"
        )
        added = 1 if self.history_has_adversarial_loss else 0
        assert len(values) == len(set(model.metrics_names) | {"adversarial_loss"}) - 1 + added
        self.assertAllClose(values[0], clean_loss, rtol=1e-5)
        if self.history_has_adversarial_loss:
            self.assertAllClose(values[-1], adversarial_loss, rtol=1e-5)
            logs = model.train_on_batch(x, y, return_dict=True)
            assert set(logs) == {"loss", "adversarial_loss"}

    @pytest.mark.parametrize(
        "method,options",
        [("fgm", dict(epsilon=0.1)), ("pgd", dict(epsilon=0.1, alpha=0.04, steps=3))],
    )
    def test_relative_epsilon_is_in_units_of_the_touched_rows_norm(self, method, options):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", method=method, relative_epsilon=True, **options)
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, _, _ = reference.adversarial_sgd_step(
            before, x, y, LR, method, objective="sum", relative_epsilon=True, **options
        )
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        # The unit is far from 1 here, so an absolute epsilon lands elsewhere.
        assert abs(reference.touched_rows_norm(before[0], x) - 1) > 0.5
        absolute, _, _ = reference.adversarial_sgd_step(before, x, y, LR, method, objective="sum", **options)
        assert np.abs(absolute[0] - expected[0]).max() > 1e-3

    @pytest.mark.parametrize("objective", ["sum", "adversarial"])
    def test_history_averages_each_epoch_separately(self, objective):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch(size=8)
        params = params_of(model)
        keras_adv.adversarial_training(model, "emb", 0.7, objective=objective)
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)

        for epoch in range(2):
            clean, adversarial = [], []
            for start in (0, 4):
                xb, yb = x[start : start + 4], y[start : start + 4]
                params, c, a = reference.adversarial_sgd_step(
                    params, xb, yb, LR, "fgm", 0.7, objective
                )
                clean.append(c)
                adversarial.append(a)
            self.assertAllClose(history.history["loss"][epoch], np.mean(clean), rtol=1e-5)
            if self.history_has_adversarial_loss:
                self.assertAllClose(
                    history.history["adversarial_loss"][epoch], np.mean(adversarial), rtol=1e-5
                )
        for actual, want in zip(params_of(model), params):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)


class RelativeSizeTests(TestCase):
    """`relative_epsilon=True` for every method that has a size, in each
    mode: the sizes are fractions of what is perturbed (the touched rows'
    norm, each example's norm; FGSM's the root-mean-square entry), one SGD
    step against tests/reference.py."""

    @pytest.mark.parametrize(
        "method,options",
        [("fgsm", dict(epsilon=0.5)), ("fgm", dict(epsilon=0.3)), ("pgd", dict(epsilon=0.2, alpha=0.15, steps=3))],
    )
    def test_per_example_sizes_are_in_units_of_each_example(self, method, options):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(
            model, "emb", method=method, per_example=True, relative_epsilon=True, **options
        )
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, _, _, _ = reference.per_example_adversarial_sgd_step(
            before, x, y, LR, method, objective="sum", relative_epsilon=True, **options
        )
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        # The examples' units differ, so no one absolute size gives this step.
        norms = reference.example_norms(before[0], x).ravel()
        assert norms.max() / norms.min() > 1.1 and abs(norms.mean() - 1) > 0.3

    def test_fgsm_on_the_matrix_steps_by_the_root_mean_square_entry(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", method="fgsm", relative_epsilon=True, epsilon=0.5)
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, _, _ = reference.adversarial_sgd_step(
            before, x, y, LR, "fgsm", 0.5, "sum", relative_epsilon=True
        )
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        assert abs(reference.relative_units(before[0], x, False, root_mean_square=True) - 1) > 0.3

    def test_free_lb_alpha_and_epsilon_are_in_units_of_each_example(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        method = keras_adv.FreeLB(epsilon=0.2, alpha=0.15, steps=3)
        keras_adv.adversarial_training(model, "emb", method=method, relative_epsilon=True)
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, _, _ = reference.free_lb_sgd_step(
            before, x, y, LR, alpha=0.15, steps=3, epsilon=0.2, relative_epsilon=True
        )
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        absolute, _, _ = reference.free_lb_sgd_step(before, x, y, LR, alpha=0.15, steps=3, epsilon=0.2)
        assert np.abs(absolute[0] - expected[0]).max() > 1e-4

    def test_vat_xi_and_epsilon_are_in_units_of_each_example(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        method = keras_adv.VAT(epsilon=0.5, xi=0.1, weight=2.0)
        keras_adv.adversarial_training(model, "emb", method=method, relative_epsilon=True)
        noise = step_noise_of(model, x)
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, _, _ = reference.vat_sgd_step(
            before, x, y, LR, noise, 0.5, 0.1, 1, 2.0, relative_epsilon=True
        )
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        absolute, _, _ = reference.vat_sgd_step(before, x, y, LR, noise, 0.5, 0.1, 1, 2.0)
        assert max(np.abs(a - e).max() for a, e in zip(absolute, expected)) > 1e-4


class EquivalenceTests(TestCase):
    def _fit_one_step(self, model, x, y):
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        return params_of(model)

    def _plain_step(self, lr):
        model = compile_sgd(linear_text_model(), lr=lr)
        return self._fit_one_step(model, *batch())

    def test_tiny_epsilon_adversarial_objective_is_a_plain_step(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        keras_adv.adversarial_training(model, "emb", 1e-12, objective="adversarial")
        adversarial = self._fit_one_step(model, *batch())
        self.setup_method(None)
        plain = self._plain_step(LR)
        for a, p in zip(adversarial, plain):
            self.assertAllClose(a, p, rtol=1e-6, atol=1e-7)

    @pytest.mark.parametrize("method", ["fgm", "pgd"])
    def test_tiny_epsilon_sum_objective_is_a_plain_step_with_double_gradient(self, method):
        model = compile_sgd(linear_text_model(), lr=LR)
        pgd_step = dict(alpha=1e-13) if method == "pgd" else {}
        keras_adv.adversarial_training(model, "emb", 1e-12, method=method, **pgd_step)
        adversarial = self._fit_one_step(model, *batch())
        self.setup_method(None)
        plain_doubled = self._plain_step(2 * LR)
        for a, p in zip(adversarial, plain_doubled):
            self.assertAllClose(a, p, rtol=1e-6, atol=1e-7)

    @pytest.mark.parametrize("objective", ["sum", "adversarial"])
    def test_pgd_with_one_step_of_epsilon_is_fgm(self, objective):
        x, y = batch()
        model = compile_sgd(linear_text_model(), lr=LR)
        keras_adv.adversarial_training(model, "emb", 0.7, objective=objective)
        fgm = self._fit_one_step(model, x, y)
        self.setup_method(None)
        model = compile_sgd(linear_text_model(), lr=LR)
        keras_adv.adversarial_training(
            model, "emb", 0.7, method="pgd", steps=1, alpha=0.7, objective=objective
        )
        pgd = self._fit_one_step(model, x, y)
        for f, p in zip(fgm, pgd):
            self.assertAllClose(f, p, rtol=1e-6, atol=1e-7)
        # ...and differs from a plain step.
        self.setup_method(None)
        plain = self._plain_step(LR)
        assert np.abs(fgm[0] - plain[0]).max() > 1e-3


PER_EXAMPLE_CASES = [
    ("fgm", dict(epsilon=0.7), "sum"),
    ("fgm", dict(epsilon=0.7), "adversarial"),
    ("pgd", dict(epsilon=0.7, alpha=0.3, steps=3), "sum"),
    # alpha * steps > epsilon: each example's projection is active.
    ("pgd", dict(epsilon=0.2, alpha=0.15, steps=4), "adversarial"),
    ("fgsm", dict(epsilon=0.05), "sum"),
]


class PerExampleClosedFormTests(TestCase):
    """`per_example=True`: each example's embedded sequence gets its own
    perturbation (Miyato et al.'s form), against tests/reference.py."""

    @pytest.mark.parametrize("method,options,objective", PER_EXAMPLE_CASES)
    def test_weights_after_one_step(self, method, options, objective):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(
            model, "emb", method=method, objective=objective, per_example=True, **options
        )
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, _, _, R = reference.per_example_adversarial_sgd_step(
            before, x, y, LR, method, objective=objective, **options
        )
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        if method != "fgsm":  # Signs may agree across examples.
            # Per example, not per token: a token in two examples got two
            # different perturbations, which the matrix mode cannot give.
            token = np.intersect1d(x[0], x[1])[0]
            first, second = R[0][x[0] == token][0], R[1][x[1] == token][0]
            assert np.abs(first - second).max() > 1e-3
        matrix, _, _ = reference.adversarial_sgd_step(before, x, y, LR, method, objective=objective, **options)
        assert np.abs(matrix[0] - expected[0]).max() > 1e-4

    @pytest.mark.parametrize("method", ["fgm", "pgd"])
    def test_tiny_epsilon_is_a_plain_step(self, method):
        model = compile_sgd(linear_text_model(), lr=LR)
        pgd_step = dict(alpha=1e-13) if method == "pgd" else {}
        keras_adv.adversarial_training(
            model, "emb", 1e-12, method=method, objective="adversarial", per_example=True, **pgd_step
        )
        x, y = batch()
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        adversarial = params_of(model)
        self.setup_method(None)
        plain = compile_sgd(linear_text_model(), lr=LR)
        plain.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        for a, p in zip(adversarial, params_of(plain)):
            self.assertAllClose(a, p, rtol=1e-6, atol=1e-7)

    def test_pgd_with_one_step_of_epsilon_is_fgm(self):
        results = []
        for method, options in (("fgm", {}), ("pgd", dict(steps=1, alpha=0.7))):
            self.setup_method(None)
            model = compile_sgd(linear_text_model(), lr=LR)
            keras_adv.adversarial_training(model, "emb", 0.7, method=method, per_example=True, **options)
            model.fit(*batch(), batch_size=8, epochs=1, shuffle=False, verbose=0)
            results.append(params_of(model))
        for f, p in zip(*results):
            self.assertAllClose(f, p, rtol=1e-6, atol=1e-7)


class FgsmClosedFormTests(TestCase):
    """FGSM on the touched rows of the matrix: `epsilon * sign(dE)`."""

    def test_weights_after_one_step(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", 0.05, method="fgsm")
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, _, _ = reference.adversarial_sgd_step(before, x, y, LR, "fgsm", 0.05, "sum")
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        # Rows the batch does not touch have a zero gradient: unperturbed.
        r = reference.fgsm_perturbation(before, x, y, 0.05)
        untouched = np.setdiff1d(np.arange(len(r)), x)
        assert len(untouched) and not r[untouched].any()


def _count_traces(model):
    """A list that grows by one each time `fit` traces the model's step."""
    traces, step = [], model.train_step
    # `(data)`, or `(state, data)` on JAX.
    model.train_step = lambda *args: traces.append(1) or step(*args)
    return traces


def _assert_traced_as_often_as_plain_training(traces, x, y):
    plain = compile_sgd(linear_text_model(), lr=LR)
    plain_traces = _count_traces(plain)
    plain.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert len(traces) == len(plain_traces) > 0


class WarmUpAndScheduleTests(TestCase):
    """`start_step` and an epsilon schedule, against tests/reference.py."""

    # tf-keras with eager execution disabled has no traced train function.
    counts_traces = True

    def test_plain_until_start_step_then_adversarial_in_one_trace(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch(size=24, seed=4)
        params = params_of(model)
        keras_adv.adversarial_training(model, "emb", 0.7, start_step=2)
        traces = _count_traces(model)
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
        for step in range(3):
            xb, yb = x[8 * step : 8 * step + 8], y[8 * step : 8 * step + 8]
            if step < 2:
                params, _ = reference.plain_sgd_step(params, xb, yb, LR)
            else:
                params, _, adversarial_loss = reference.adversarial_sgd_step(params, xb, yb, LR, "fgm", 0.7, "sum")
        for actual, want in zip(params_of(model), params):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        if "adversarial_loss" in history:  # The mean of the adversarial steps only.
            self.assertAllClose(history["adversarial_loss"][0], adversarial_loss, rtol=1e-5)
        if self.counts_traces:  # No retrace at the switch: as many as plain training.
            _assert_traced_as_often_as_plain_training(traces, x, y)

    def test_epsilon_schedule_gives_each_step_its_epsilon(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch(size=16, seed=5)
        params = params_of(model)
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.7, 0.2])
        keras_adv.adversarial_training(model, "emb", schedule, method="pgd", steps=2, alpha=0.3)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        for step, epsilon in enumerate((0.7, 0.2)):
            xb, yb = x[8 * step : 8 * step + 8], y[8 * step : 8 * step + 8]
            params, _, _ = reference.adversarial_sgd_step(
                params, xb, yb, LR, "pgd", epsilon, "sum", alpha=0.3, steps=2
            )
        for actual, want in zip(params_of(model), params):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_bad_start_step_and_schedule(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        with pytest.raises(ValueError, match="start_step"):
            keras_adv.adversarial_training(model, "emb", 0.5, start_step=-1)
        for bad in (2.5, True):
            with pytest.raises(TypeError, match="start_step"):
                keras_adv.adversarial_training(model, "emb", 0.5, start_step=bad)
        with pytest.raises(ValueError, match="epsilon"):
            keras_adv.adversarial_training(model, "emb", lambda step: -1.0)
        with pytest.raises(TypeError, match="schedule of the optimizer's step count"):
            keras_adv.adversarial_training(model, "emb", lambda: 0.5)
        with pytest.raises(TypeError, match="must be a real number"):
            keras_adv.adversarial_training(model, "emb", lambda step: "0.5")
        # A ramp may start at 0.
        ramp = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.0, 0.5])
        keras_adv.adversarial_training(model, "emb", ramp)


class BadScheduleTests(TestCase):
    """Each step checks its own epsilon where it uses it: a schedule that is
    fine at step 0 and goes bad later raises at that step, naming it."""

    @pytest.mark.parametrize(
        "later,error",
        [(-0.5, "gave.*-0.5.*at step.*1.*finite number >= 0"), (float("nan"), "gave.*nan.*at step.*1")],
        ids=["negative", "nan"],
    )
    @pytest.mark.parametrize("method", ["fgm", "pgd"])
    def test_a_bad_value_later_raises_at_its_step(self, later, error, method):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch(size=16, seed=5)
        if later < 0:
            turning_bad = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.7, later])
        else:  # NaN from step 1 on (a NaN in the decay's own table would be NaN at 0 too).
            sign = keras.optimizers.schedules.PiecewiseConstantDecay([0], [1.0, -1.0])

            def turning_bad(step):
                return 0.7 * sign(step) ** 0.5
        keras_adv.adversarial_training(model, "emb", turning_bad, method=method)
        name = "PiecewiseConstantDecay" if later < 0 else "turning_bad"
        with pytest.raises(Exception, match=f"(?s)epsilon schedule {name} {error}"):
            model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)


class GradientPenaltyTests(TestCase):
    """`GradientPenalty`: one SGD step on the penalised loss, against a numpy
    reference differentiated by central differences."""

    history_name = "gradient_penalty"

    @pytest.mark.parametrize("per_example", [False, True], ids=["matrix", "per example"])
    @pytest.mark.parametrize("relative,weight", [(False, 30.0), (True, 0.5)], ids=["absolute", "relative"])
    def test_weights_after_one_step(self, per_example, relative, weight):
        # Relative: weight * n * ||g||, n the touched rows' (each example's)
        # norm held constant, the first-order gain of FGM; scale-free.
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(
            model, "emb", method=keras_adv.GradientPenalty(weight=weight), per_example=per_example,
            relative_epsilon=relative,
        )
        history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
        expected, clean_loss, penalty = reference.gradient_penalty_sgd_step(
            before, x, y, LR, weight, per_example=per_example, relative=relative
        )
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        assert_beyond_plain(expected, before, x, y)  # The penalty moved the weights.
        self.assertAllClose(history["loss"][0], clean_loss, rtol=1e-5)
        if self.history_name:
            self.assertAllClose(history[self.history_name][0], penalty, rtol=1e-5)

    def test_plain_until_start_step_then_penalised(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch(size=16, seed=4)
        params = params_of(model)
        keras_adv.adversarial_training(
            model, "emb", method=keras_adv.GradientPenalty(weight=30.0), start_step=1
        )
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        params, _ = reference.plain_sgd_step(params, x[:8], y[:8], LR)
        params, _, _ = reference.gradient_penalty_sgd_step(params, x[8:], y[8:], LR, 30.0)
        for actual, want in zip(params_of(model), params):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_by_name_with_its_default_relative_weight(self):
        # No size given: the relative default (`keras_adv.RELATIVE_DEFAULTS`).
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", method="gradient_penalty")
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        weight = keras_adv.RELATIVE_DEFAULTS["gradient_penalty"][False]["weight"]
        expected, _, _ = reference.gradient_penalty_sgd_step(before, x, y, LR, weight, relative=True)
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_bad_options_say_what_the_penalty_takes(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        with pytest.raises(ValueError, match="GradientPenalty\\(weight=...\\)"):
            keras_adv.adversarial_training(model, "emb", 0.5, method="gradient_penalty")
        with pytest.raises(ValueError, match="perturbs nothing"):
            keras_adv.adversarial_training(model, "emb", method="gradient_penalty", objective="adversarial")
        with pytest.raises(ValueError, match="weight"):
            keras_adv.GradientPenalty(weight=0.0)


class FreeLBTests(TestCase):
    """FreeLB from a zero start against tests/reference.py, and the routes
    that tie it to plain training and to per-example FGM."""

    history_has_adversarial_loss = True

    @pytest.mark.parametrize("epsilon", [0.0, 0.4], ids=["no ball", "projected"])
    def test_weights_after_one_step(self, epsilon):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(
            model, "emb", method=keras_adv.FreeLB(epsilon=epsilon, alpha=0.3, steps=3)
        )
        history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
        expected, first_loss, mean_loss = reference.free_lb_sgd_step(
            before, x, y, LR, alpha=0.3, steps=3, epsilon=epsilon
        )
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        self.assertAllClose(history["loss"][0], first_loss, rtol=1e-5)
        if self.history_has_adversarial_loss:
            self.assertAllClose(history["adversarial_loss"][0], mean_loss, rtol=1e-5)
        if epsilon:  # The ball was active: without it the step lands elsewhere.
            unprojected, _, _ = reference.free_lb_sgd_step(before, x, y, LR, alpha=0.3, steps=3)
            assert np.abs(unprojected[0] - expected[0]).max() > 1e-4

    def test_one_pass_from_zero_is_a_plain_step(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", method="freelb", steps=1)
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, _ = reference.plain_sgd_step(before, x, y, LR)
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_two_passes_are_per_example_fgm_at_half_the_learning_rate(self):
        x, y = batch()
        trained = []
        for lr, options in ((2 * LR, dict(method="freelb", steps=2, alpha=0.7)),
                            (LR, dict(method="fgm", epsilon=0.7, per_example=True))):
            self.setup_method(None)
            model = compile_sgd(linear_text_model(), lr=lr)
            keras_adv.adversarial_training(model, "emb", **options)
            model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
            trained.append(params_of(model))
        for a, b in zip(*trained):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)

    def test_random_start_is_seeded_and_moves_the_step(self):
        x, y = batch()
        results = []
        for init in (0.5, 0.5, 0.0):
            self.setup_method(None)  # The same global seed each time.
            model = compile_sgd(linear_text_model(), lr=LR)
            method = keras_adv.FreeLB(alpha=0.3, steps=2, init_magnitude=init)
            keras_adv.adversarial_training(model, "emb", method=method)
            model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
            results.append(params_of(model))
        for a, b in zip(results[0], results[1]):
            self.assertBitEqual(a, b)
        assert np.abs(results[0][0] - results[2][0]).max() > 1e-4

    def test_bad_options(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        with pytest.raises(ValueError, match="FreeLB"):
            keras_adv.adversarial_training(model, "emb", method="freelb", objective="adversarial")
        with pytest.raises(ValueError, match="no matrix mode"):
            keras_adv.adversarial_training(model, "emb", method="freelb", per_example=False)
        with pytest.raises(ValueError, match="init_magnitude"):
            keras_adv.FreeLB(init_magnitude=-1.0)


class AWPTests(TestCase):
    """AWP against tests/reference.py's `awp_sgd_step`."""

    history_has_adversarial_loss = True  # Not tf-keras's graph-mode History.
    counts_traces = True  # Not tf-keras's graph-mode step (a function, not a `train_step`).
    regularizers_read_the_perturbed_copy = True  # Keras 3's stateless scope; not tf-keras.

    @pytest.mark.parametrize(
        "alpha,epsilon,steps,clipping,objective",
        [(1.0, 0.05, 1, True, "sum"), (1.0, 0.05, 1, True, "adversarial"),
         (0.02, 1e4, 1, False, "sum"), (0.5, 0.08, 2, True, "adversarial"),
         # Long steps inside the box: the second step's length is alpha times
         # the norm of the perturbed weight, not of the original one.
         (0.3, 1e4, 2, False, "sum")],
        ids=["clipped", "clipped, adversarial", "inside the box", "two steps clipped, adversarial",
             "two long steps inside the box"],
    )
    def test_weights_after_one_step(self, alpha, epsilon, steps, clipping, objective):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        method = keras_adv.AWP(alpha=alpha, epsilon=epsilon, steps=steps)
        keras_adv.adversarial_training(model, method=method, objective=objective)
        history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
        expected, clean_loss, adversarial_loss, clipped = reference.awp_sgd_step(
            before, x, y, LR, alpha, epsilon, steps, objective
        )
        assert clipped == clipping  # The case tests what it says.
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        self.assertAllClose(history["loss"][0], clean_loss, rtol=1e-5)
        if self.history_has_adversarial_loss:
            self.assertAllClose(history["adversarial_loss"][0], adversarial_loss, rtol=1e-5)
        assert adversarial_loss > clean_loss
        # The perturbation moved the step (under "sum", beyond the clean gradient taken twice).
        assert_beyond_plain(expected, before, x, y, margin=1e-4, clean_twice=objective == "sum")

    @pytest.mark.parametrize(
        "weights,selected",
        [("dense", (1, 2)), ("emb", (0,)), (lambda v: len(v.shape) == 1, (2,))],
        ids=["pattern", "embedding only", "callable"],
    )
    def test_weights_selects_what_is_perturbed(self, weights, selected):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(
            model, method=keras_adv.AWP(alpha=1.0, epsilon=0.1, weights=weights)
        )
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, *_ = reference.awp_sgd_step(before, x, y, LR, 1.0, 0.1, 1, "sum", selected)
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_tiny_box_adversarial_objective_is_a_plain_step(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, method="awp", epsilon=1e-9, objective="adversarial")
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, _ = reference.plain_sgd_step(before, x, y, LR)
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_plain_until_start_step_then_awp(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch(size=16, seed=4)
        params = params_of(model)
        keras_adv.adversarial_training(model, method="awp", epsilon=0.05, start_step=1)
        traces = _count_traces(model) if self.counts_traces else None
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
        params, _ = reference.plain_sgd_step(params, x[:8], y[:8], LR)
        params, _, adversarial_loss, _ = reference.awp_sgd_step(
            params, x[8:], y[8:], LR, 1.0, 0.05, 1, "sum"
        )
        for actual, want in zip(params_of(model), params):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        if self.history_has_adversarial_loss:  # The warm-up step adds nothing to the mean.
            self.assertAllClose(history["adversarial_loss"][0], adversarial_loss, rtol=1e-5)
        if self.counts_traces:  # No retrace at the switch.
            _assert_traced_as_often_as_plain_training(traces, x, y)

    def test_variables_are_never_written_by_the_perturbed_passes(self):
        # With a learning rate of 0 the update changes nothing, so every
        # weight must come out bit for bit as it went in.
        model = compile_sgd(linear_text_model(), lr=0.0)
        x, y = batch()
        before = [np.array(w) for w in model.get_weights()]
        keras_adv.adversarial_training(model, method="awp", epsilon=0.5, steps=2)
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        for actual, want in zip(model.get_weights(), before):
            self.assertBitEqual(actual, want)
        assert len(model.weights) == len(before)

    def test_a_weight_regularizer_sees_the_weight_the_pass_reads(self):
        # A kernel regularizer reads its variable directly. Keras 3's stateless
        # scope gives it the perturbed copy, as every other read; tf-keras's
        # layers read substitutes through their attributes only, so there AWP
        # refuses such a weight rather than mix in its original.
        def regularized(box):
            model = keras.Sequential([
                keras.Input((5,), dtype="int32"),
                keras.layers.Embedding(20, 4, name="emb"),
                keras.layers.GlobalAveragePooling1D(),
                keras.layers.Dense(3, name="dense", kernel_regularizer=keras.regularizers.L2(0.3)),
            ])
            compile_sgd(model, lr=LR)
            if box is not None:
                keras_adv.adversarial_training(model, method="awp", epsilon=box, objective="adversarial")
            return model

        x, y = batch()
        if not self.regularizers_read_the_perturbed_copy:
            with pytest.raises(NotImplementedError, match="AWP cannot perturb weight 'dense/kernel.*regularizer"):
                regularized(0.5).fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
            return
        # A tiny box: a plain step of the regularized loss. A large one: not.
        results = []
        for box in (None, 1e-9, 0.5):
            self.setup_method(None)
            keras.utils.set_random_seed(7)
            model = regularized(box)
            model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
            results.append(model.get_weights())
        for plain, tiny in zip(results[0], results[1]):
            self.assertAllClose(tiny, plain, rtol=1e-5, atol=1e-6)
        assert np.abs(results[2][1] - results[0][1]).max() > 1e-3

    def test_bad_options(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        for options in (dict(relative_epsilon=True), dict(per_example=True),
                        dict(per_example=False)):
            with pytest.raises(ValueError, match="AWP perturbs the model's weights"):
                keras_adv.adversarial_training(model, method="awp", **options)
        with pytest.raises(ValueError, match="takes no `embedding_name`"):
            keras_adv.adversarial_training(model, "emb", method="awp")
        with pytest.raises(ValueError, match="selects none of the trainable weights"):
            keras_adv.adversarial_training(model, method=keras_adv.AWP(weights="no such weight"))
        with pytest.raises(ValueError, match="name its layer"):
            keras_adv.adversarial_training(model, method="fgm")
        with pytest.raises(ValueError, match="alpha"):
            keras_adv.AWP(alpha=0.0)
        with pytest.raises(TypeError, match="weights"):
            keras_adv.AWP(weights=3)


def step_noise_of(model, x, step_count=0, kind="normal", dim=DIM):
    """The noise the installed step draws at `step_count` for the token ids
    `x` of a model of width `dim` (VAT's normal, or FreeLB's and NEFTune's
    uniform), as numpy (the stack's own `noise`, with the step's seed)."""
    import tensorflow as tf

    from keras_adv import _stacks
    from keras_adv._stacks.passes import AdversarialStep

    [step] = [bound.__func__ for bound in vars(model).values()
              if isinstance(getattr(bound, "__func__", None), AdversarialStep)]
    noise = _stacks.stack_for(model).noise(kind, step.seed, step_count, 0, x.shape + (dim,))
    if not hasattr(noise, "__array__") or not tf.executing_eagerly():  # A graph tensor.
        noise = tf.compat.v1.keras.backend.get_session().run(noise)
    return np.asarray(noise, dtype="float64")


class VATTests(TestCase):
    """VAT against tests/reference.py's `vat_sgd_step`, fed the step's own noise."""

    history_has_divergence = True  # Not tf-keras's graph-mode History.
    counts_traces = True  # Not tf-keras's graph-mode step (a function, not a `train_step`).

    @pytest.mark.parametrize(
        "power_iterations,symmetric", [(1, False), (2, False), (1, True)],
        ids=["one iteration", "two iterations", "symmetric (SMART)"],
    )
    def test_weights_after_one_step(self, power_iterations, symmetric):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        method = keras_adv.VAT(epsilon=1.5, xi=0.1, power_iterations=power_iterations, weight=2.0,
                               symmetric=symmetric)
        keras_adv.adversarial_training(model, "emb", method=method)
        noise = step_noise_of(model, x)
        history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
        expected, clean_loss, divergence = reference.vat_sgd_step(
            before, x, y, LR, noise, 1.5, 0.1, power_iterations, 2.0, symmetric
        )
        # The reverse KL differences logs of nearly equal float32
        # probabilities: a few 1e-6 of rounding in the update.
        atol = 1e-5 if symmetric else 1e-6
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=atol)
        self.assertAllClose(history["loss"][0], clean_loss, rtol=1e-5)
        if self.history_has_divergence:
            self.assertAllClose(history["vat_divergence"][0], divergence, rtol=1e-4)
        assert_beyond_plain(expected, before, x, y)  # The term moved the weights.

    def test_plain_until_start_step_then_vat(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch(size=16, seed=4)
        params = params_of(model)
        keras_adv.adversarial_training(
            model, "emb", method=keras_adv.VAT(epsilon=1.5, weight=2.0), start_step=1
        )
        noise = step_noise_of(model, x[8:], step_count=1)  # The second step's draw.
        traces = _count_traces(model) if self.counts_traces else None
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        params, _ = reference.plain_sgd_step(params, x[:8], y[:8], LR)
        params, _, _ = reference.vat_sgd_step(params, x[8:], y[8:], LR, noise, 1.5, 0.1, 1, 2.0)
        for actual, want in zip(params_of(model), params):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        if self.counts_traces:  # No retrace at the switch, nor for the noise of each step.
            _assert_traced_as_often_as_plain_training(traces, x, y)

    def test_weight_zero_is_a_plain_step(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", method=keras_adv.VAT(weight=0.0))
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        expected, _ = reference.plain_sgd_step(before, x, y, LR)
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)

    def test_unlabeled_examples_train_through_the_divergence_only(self):
        x, y = batch()
        labeled = np.array([1.0] * 4 + [0.0] * 4)  # The last four are unlabeled.
        results = []
        for labels in (y, np.where(labeled > 0, y, (y + 1) % 3)):  # Their labels do not count.
            self.setup_method(None)
            model = compile_sgd(linear_text_model(), lr=LR)
            before = params_of(model)
            keras_adv.adversarial_training(model, "emb", method=keras_adv.VAT(epsilon=1.5, weight=2.0))
            noise = step_noise_of(model, x)
            model.fit(x, labels, sample_weight=labeled, batch_size=len(x), epochs=1, shuffle=False,
                      verbose=0)
            results.append(params_of(model))
        expected, _, _ = reference.vat_sgd_step(
            before, x, y, LR, noise, 1.5, 0.1, 1, 2.0, sample_weight=labeled
        )
        for actual, other, want in zip(results[0], results[1], expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
            self.assertAllClose(other, want, rtol=1e-5, atol=1e-6)
        assert_beyond_plain(expected, before, x, y, sample_weight=labeled)  # The divergence term mattered.

    def test_a_divergence_callable_is_a_second_route_to_the_same_step(self):
        def categorical_kl(clean, perturbed):
            log_p = keras.ops.log_softmax(clean, axis=-1) if hasattr(keras, "ops") else None
            if log_p is None:  # tf-keras: TensorFlow's own ops.
                import tensorflow as tf

                log_p, log_q = tf.nn.log_softmax(clean), tf.nn.log_softmax(perturbed)
                return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)
            log_q = keras.ops.log_softmax(perturbed, axis=-1)
            return keras.ops.sum(keras.ops.exp(log_p) * (log_p - log_q), axis=-1)

        x, y = batch()
        trained = []
        for divergence in (None, categorical_kl):
            self.setup_method(None)
            model = compile_sgd(linear_text_model(), lr=LR)
            keras_adv.adversarial_training(
                model, "emb", method=keras_adv.VAT(weight=2.0, divergence=divergence)
            )
            model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
            trained.append(params_of(model))
        for a, b in zip(*trained):
            self.assertAllClose(a, b, rtol=1e-5, atol=1e-6)

    def test_the_outputs_distribution_comes_from_the_compiled_loss(self):
        from keras_adv._stacks.outputs import divergence_kind

        method = keras_adv.VAT()
        for loss, kind in (
            (keras.losses.SparseCategoricalCrossentropy(from_logits=True), "categorical_logits"),
            ("sparse_categorical_crossentropy", "categorical"),
            (keras.losses.CategoricalCrossentropy(), "categorical"),
            (keras.losses.BinaryCrossentropy(from_logits=True), "bernoulli_logits"),
            ("binary_crossentropy", "bernoulli"),
        ):
            model = linear_text_model()
            model.compile(optimizer="sgd", loss=loss)
            assert divergence_kind(model, method) == kind
        model = linear_text_model()
        model.compile(optimizer="sgd", loss="mse")
        with pytest.raises(ValueError, match="divergence='categorical_logits'"):
            keras_adv.adversarial_training(model, "emb", method="vat")
        keras_adv.adversarial_training(model, "emb", method=keras_adv.VAT(divergence="categorical"))

    def test_bad_options(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        with pytest.raises(ValueError, match="VAT adds its divergence term"):
            keras_adv.adversarial_training(model, "emb", method="vat", objective="adversarial")
        with pytest.raises(ValueError, match="no matrix mode"):
            keras_adv.adversarial_training(model, "emb", method="vat", per_example=False)
        with pytest.raises(ValueError, match="VAT takes no `alpha`"):
            keras_adv.adversarial_training(model, "emb", method="vat", alpha=0.1)
        with pytest.raises(ValueError, match="power_iterations"):
            keras_adv.VAT(power_iterations=0)
        with pytest.raises(ValueError, match="xi"):
            keras_adv.VAT(xi=-1.0)
        with pytest.raises(TypeError, match="symmetric"):
            keras_adv.VAT(symmetric="yes")
        with pytest.raises(ValueError, match="divergence"):
            keras_adv.VAT(divergence="poisson")



class NEFTuneTests(TestCase):
    """NEFTune against tests/reference.py's `neftune_sgd_step`, fed the step's own noise."""

    # tf-keras's graph-mode History reports its model's own (clean) loss.
    history_has_noisy_loss = True

    def test_weights_after_one_step(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, "emb", method="neftune", alpha=5.0)
        noise = step_noise_of(model, x, kind="uniform")
        history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
        expected, noisy_loss = reference.neftune_sgd_step(before, x, y, LR, noise, 5.0)
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        # The loss it reports is the pass it trains on; it adds no History entry.
        if self.history_has_noisy_loss:
            self.assertAllClose(history["loss"][0], noisy_loss, rtol=1e-5)
        assert set(history) == {"loss"}
        assert_beyond_plain(expected, before, x, y)  # The noise moved the step.

    def test_each_step_draws_its_own_noise_and_evaluation_sees_none(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        x, y = batch(size=16, seed=4)
        params = params_of(model)
        keras_adv.adversarial_training(model, "emb", method=keras_adv.NEFTune(alpha=10.0), start_step=1)
        noise = step_noise_of(model, x[8:], step_count=1, kind="uniform")
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        params, _ = reference.plain_sgd_step(params, x[:8], y[:8], LR)
        params, _ = reference.neftune_sgd_step(params, x[8:], y[8:], LR, noise, 10.0)
        for actual, want in zip(params_of(model), params):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        loss, _, _ = reference.forward(params, x, y)
        self.assertAllClose(model.evaluate(x, y, batch_size=16, verbose=0), loss, rtol=1e-5)

    def test_bad_options(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        with pytest.raises(ValueError, match="NEFTune trains on its noisy pass alone"):
            keras_adv.adversarial_training(model, "emb", method="neftune", objective="adversarial")
        with pytest.raises(ValueError, match="no matrix mode"):
            keras_adv.adversarial_training(model, "emb", method="neftune", per_example=False)
        with pytest.raises(ValueError, match="takes no `relative_epsilon`"):
            keras_adv.adversarial_training(model, "emb", method="neftune", relative_epsilon=True)
        with pytest.raises(ValueError, match="NEFTune takes no `epsilon`"):
            keras_adv.adversarial_training(model, "emb", 0.1, method="neftune")
        with pytest.raises(ValueError, match="name its layer"):
            keras_adv.adversarial_training(model, method="neftune")
        with pytest.raises(ValueError, match="alpha"):
            keras_adv.NEFTune(alpha=0.0)


class RDropTests(TestCase):
    """R-Drop against tests/reference.py's `rdrop_sgd_step`, on a model whose
    dropout masks are known (tests/models.py's `AlternatingMask`)."""

    history_has_divergence = True  # Not tf-keras's graph-mode History.

    @pytest.mark.parametrize("alpha", [0.0, 4.0])
    def test_weights_after_one_step(self, alpha):
        model = compile_sgd(masked_text_model(), lr=LR)
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, method="rdrop", alpha=alpha)
        history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
        expected, first_loss, divergence = reference.rdrop_sgd_step(before, x, y, LR, alpha, MASKS)
        for actual, want in zip(params_of(model), expected):
            self.assertAllClose(actual, want, rtol=1e-5, atol=1e-6)
        self.assertAllClose(history["loss"][0], first_loss, rtol=1e-5)
        if self.history_has_divergence:
            self.assertAllClose(history["rdrop_divergence"][0], divergence, rtol=1e-4)
        # The masks made the passes differ, and the term moved the step.
        assert divergence > 1e-3
        if alpha:
            unregularized, _, _ = reference.rdrop_sgd_step(before, x, y, LR, 0.0, MASKS)
            assert max(np.abs(e - u).max() for e, u in zip(expected, unregularized)) > 1e-4

    def test_without_dropout_the_step_raises_and_changes_nothing(self):
        # Its two passes agree: R-Drop would be a plain step at twice the cost.
        # Keras's JAX `fit` loses the weights of any step that raises
        # (tests/keras3_jax/test_jax.py): there the step runs eagerly, on its own.
        jax = hasattr(keras, "ops") and keras.backend.backend() == "jax"
        model = compile_sgd(linear_text_model(), lr=LR, **(dict(run_eagerly=True) if jax else {}))
        x, y = batch()
        before = params_of(model)
        keras_adv.adversarial_training(model, method=keras_adv.RDrop(alpha=4.0))
        with pytest.raises(Exception, match="(?s)R-Drop: the two training passes of model linear_text gave identical outputs"):
            if jax:
                model.train_on_batch(x, y)
            else:
                model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        for actual, want in zip(params_of(model), before):
            np.testing.assert_array_equal(actual, want)

    def test_bad_options(self):
        model = compile_sgd(linear_text_model(), lr=LR)
        with pytest.raises(ValueError, match="RDrop perturbs nothing.*takes no `embedding_name`"):
            keras_adv.adversarial_training(model, "emb", method="rdrop")
        with pytest.raises(ValueError, match="R-Drop updates from its two passes"):
            keras_adv.adversarial_training(model, method="rdrop", objective="adversarial")
        with pytest.raises(ValueError, match="RDrop takes no `steps`"):
            keras_adv.adversarial_training(model, method="rdrop", steps=2)
        with pytest.raises(ValueError, match="alpha"):
            keras_adv.RDrop(alpha=-1.0)
