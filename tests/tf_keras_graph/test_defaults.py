"""Each method's default trains (tests/defaults.py), on tf-keras with eager execution disabled."""

from tests.defaults import DefaultsTrainTests


class TestDefaultsTrain(DefaultsTrainTests):
    pass
