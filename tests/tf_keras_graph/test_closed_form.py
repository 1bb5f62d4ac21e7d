"""The closed-form checks (tests/closed_form.py) on tf-keras with eager execution disabled."""

from tests.closed_form import (
    AWPTests, EquivalenceTests, FgsmClosedFormTests, FreeLBTests, GradientPenaltyTests, OneStepClosedFormTests,
    PerExampleClosedFormTests, VATTests, WarmUpAndScheduleTests,
)


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
