"""MirroredStrategy parity and mixed precision (tests/mirrored.py, tests/mixed_precision.py)."""

from tests.mirrored import MirroredParityTests
from tests.mixed_precision import MixedPrecisionTests


class TestMirroredParity(MirroredParityTests):
    pass


class TestMixedPrecision(MixedPrecisionTests):
    pass
