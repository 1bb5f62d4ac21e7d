"""Mixed precision on one device (tests/mixed_precision.py), on each Keras 3 backend."""

from tests.mixed_precision import MixedPrecisionTests


class TestMixedPrecision(MixedPrecisionTests):
    strategies = ["one device"]
