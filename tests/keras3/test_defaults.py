"""Each method's default trains (tests/defaults.py), on the backend of the process."""

from tests.defaults import DefaultsTrainTests


class TestDefaultsTrain(DefaultsTrainTests):
    pass
