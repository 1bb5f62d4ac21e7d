"""No perturbed pass builds a V x d tensor that the plain step does not build.

Every tensor that an operator makes during one `model.train_step(data)` is
recorded (`TorchDispatchMode`: below autograd, so the backward's operators
too), those with V rows kept, except an operator's output that shares an
input's storage (an in-place update, a view). PyTorch's gradient of the
embedding matrix is dense (`embedding_dense_backward`), and Adam's update
makes V x d temporaries, so the plain step itself builds some. Under
`objective="adversarial"` the perturbed passes differentiate only the
lookups' outputs: the step builds exactly the plain step's; under `"sum"`
one more gradient of the matrix (the clean pass's) and their sum.
"""

import collections

import keras
import numpy as np
import pytest

assert keras.backend.backend() == "torch", (
    f"tests/keras3_torch runs with KERAS_BACKEND=torch (got {keras.backend.backend()!r}): "
    f"run it in its own process, e.g. `KERAS_BACKEND=torch python -m pytest tests/keras3_torch`."
)

import torch  # noqa: E402
from torch.utils import _pytree  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import keras_adv  # noqa: E402
from tests.models import (  # noqa: E402
    LARGE_VOCAB, LARGE_VOCAB_DIM, LARGE_VOCAB_METHODS, large_vocabulary_batch,
    large_vocabulary_model,
)

VOCAB, DIM = LARGE_VOCAB, LARGE_VOCAB_DIM
METHODS = LARGE_VOCAB_METHODS
text_model = large_vocabulary_model


def data():
    x, y = large_vocabulary_batch()
    return keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)


class VocabularyTensors(TorchDispatchMode):
    """Records `{(operator, shape): n}` for the new tensors with VOCAB rows."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        outputs = func(*args, **kwargs)
        inputs = {
            t.untyped_storage().data_ptr()
            for t in _pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for t in _pytree.tree_leaves(outputs):
            if (isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == VOCAB
                    and t.untyped_storage().data_ptr() not in inputs):
                self.counts[(func.overloadpacket.__name__, tuple(t.shape))] += 1
        return outputs


def train_step_tensors(model):
    model.train_step(data())  # Builds the optimizer's slots, as `fit`'s first step does.
    with VocabularyTensors() as recorded:
        model.train_step(data())
    return recorded.counts


@pytest.fixture(scope="module")
def plain():
    return train_step_tensors(text_model())


def adversarial_tensors(objective, options):
    model = text_model()
    keras_adv.adversarial_training(model, "emb", 0.5, objective=objective, **options)
    return train_step_tensors(model)


ONE_GRADIENT = collections.Counter({("embedding_dense_backward", (VOCAB, DIM)): 1})


def test_the_plain_step_builds_the_dense_gradient_and_adams_temporaries(plain):
    # What the comparisons below compare with: the dense gradient of the
    # matrix, and Adam's V x d temporaries (5 with Keras 3.15, PyTorch 2.13).
    assert not ONE_GRADIENT - plain
    assert plain - ONE_GRADIENT


@pytest.mark.parametrize("method", METHODS)
def test_adversarial_objective_builds_what_the_plain_step_builds(plain, method):
    assert adversarial_tensors("adversarial", METHODS[method]) == plain


@pytest.mark.parametrize("method", METHODS)
def test_sum_objective_adds_one_gradient_and_the_sum(plain, method):
    # The clean pass's weight gradient, kept for the update, and its sum with
    # the perturbed pass's: the only V x d tensors beyond the plain step's.
    expected = plain + ONE_GRADIENT + collections.Counter({("add", (VOCAB, DIM)): 1})
    assert adversarial_tensors("sum", METHODS[method]) == expected
