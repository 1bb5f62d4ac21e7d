"""The closed-form checks (tests/closed_form.py) on Keras 3, on the backend of the process."""

from tests.closed_form import (
    AWPTests, BadScheduleTests, RelativeSizeTests, EquivalenceTests, FgsmClosedFormTests, FreeLBTests, GradientPenaltyTests, OneStepClosedFormTests,
    NEFTuneTests, PerExampleClosedFormTests, RDropTests, VATTests, WarmUpAndScheduleTests,
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


class TestGradientPenalty(GradientPenaltyTests):
    pass


class TestFreeLB(FreeLBTests):
    pass


class TestAWP(AWPTests):
    pass


class TestVAT(VATTests):
    pass


class TestBadSchedule(BadScheduleTests):
    pass


class TestRelativeSize(RelativeSizeTests):
    pass


class TestNEFTune(NEFTuneTests):
    pass


class TestRDrop(RDropTests):
    pass
