"""A failing step leaves the weights as they were (tests/failing_step.py), with
eager execution disabled: the whole step is one `session.run`."""

from tests.failing_step import FailingStepTests


class TestFailingStep(FailingStepTests):
    modes = [{}]
