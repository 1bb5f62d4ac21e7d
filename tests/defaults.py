"""Each method's default sizes train: with no size given, the loss falls at
least half as far as plain training's over the same steps (the defaults are
relative, `keras_adv.RELATIVE_DEFAULTS`, so the same ones serve any model).

Stack-neutral: each stack's test folder runs `DefaultsTrainTests` in its own
process, where `keras` (through tests/models.py) is that stack's Keras.
"""

import numpy as np
import pytest

import keras_adv
from tests.models import CLASSES, LENGTH, VOCAB, compile_sgd, linear_text_model
from tests.testing import TestCase

# Every method by name, in each mode it has a default for, nothing else given.
DEFAULTS = {
    name + (" per example" if per_example else ""): dict(method=name, per_example=per_example)
    for name, modes in keras_adv.RELATIVE_DEFAULTS.items() for per_example in modes
} | {"awp": dict(method="awp")}
EPOCHS, BATCH, LR = 4, 16, 3.0


def learnable_batch(size=64, seed=5):
    """Token ids whose label is the most frequent token class (`id % CLASSES`):
    a task the linear model's mean over tokens can learn."""
    rng = np.random.RandomState(seed)
    x = rng.randint(1, VOCAB, size=(size, LENGTH)).astype("int32")
    counts = np.stack([(x % CLASSES == c).sum(axis=1) for c in range(CLASSES)], axis=1)
    return x, counts.argmax(axis=1).astype("int32")


class DefaultsTrainTests(TestCase):
    _plain_drop = {}  # Plain training's drop, once per process.

    def _loss_drop(self, options):
        """The mean training loss of the first epoch minus the last's."""
        self.setup_method(None)
        x, y = learnable_batch()
        model = compile_sgd(linear_text_model(), lr=LR)
        if options is not None:
            embedding = None if options["method"] == "awp" else "emb"
            keras_adv.adversarial_training(model, embedding, **options)
        loss = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0).history["loss"]
        return loss[0] - loss[-1]

    @pytest.mark.parametrize("name", list(DEFAULTS))
    def test_the_default_trains_at_least_half_as_far_as_plain(self, name):
        if "plain" not in self._plain_drop:
            self._plain_drop["plain"] = self._loss_drop(None)
        plain = self._plain_drop["plain"]
        assert plain > 0.2  # Plain training learns: the comparison means something.
        drop = self._loss_drop(DEFAULTS[name])
        print(f"{name}: the loss fell by {drop:.3f}, plain's by {plain:.3f}")
        assert drop >= 0.5 * plain, f"{name}: the loss fell by {drop:.3f}, plain's by {plain:.3f}"
