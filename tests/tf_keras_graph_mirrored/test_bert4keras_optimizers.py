"""bert4keras's optimizers under MirroredStrategy with eager execution disabled
(tests/mirrored.py)."""

from tests.mirrored import Bert4kerasOptimizerParityTests


class TestBert4kerasOptimizerParity(Bert4kerasOptimizerParityTests):
    history_has_adversarial_loss = False  # Graph mode's History: the compiled metrics only.
