"""Each method's default trains (tests/defaults.py), on tf-keras in eager mode (bert4keras's stack)."""

from tests.defaults import DefaultsTrainTests


class TestDefaultsTrain(DefaultsTrainTests):
    pass
