"""bert4keras's optimizers under MirroredStrategy, eager (tests/mirrored.py)."""

from tests.mirrored import Bert4kerasOptimizerParityTests


class TestBert4kerasOptimizerParity(Bert4kerasOptimizerParityTests):
    pass
