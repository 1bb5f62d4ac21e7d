"""A failing step leaves the weights as they were (tests/failing_step.py), tf-keras eager."""

from tests.failing_step import FailingStepTests


class TestFailingStep(FailingStepTests):
    pass  # Compiled and run eagerly, FailingStepTests's own modes.
