"""The closed-form checks (tests/closed_form.py) on Keras 3 with TensorFlow."""

from tests.closed_form import (
    EquivalenceTests, FgsmClosedFormTests, OneStepClosedFormTests, PerExampleClosedFormTests,
    WarmUpAndScheduleTests,
)


class TestOneStepClosedForm(OneStepClosedFormTests):
    pass


class TestEquivalences(EquivalenceTests):
    pass


class TestPerExampleClosedForm(PerExampleClosedFormTests):
    pass


class TestFgsmClosedForm(FgsmClosedFormTests):
    pass


class TestWarmUpAndSchedule(WarmUpAndScheduleTests):
    pass
