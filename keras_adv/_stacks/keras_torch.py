"""Keras 3 on the PyTorch backend: an adversarial `train_step(data)` on the
model instance, following `keras/src/backend/torch/trainer.py` (eager passes,
gradients from `torch.autograd.grad`, `optimizer.apply` under `no_grad`).
"""

import contextlib

import keras
import torch
from keras import ops

from keras_adv._stacks import keras3
from keras_adv._stacks.lookup import tapped_lookups
from keras_adv._stacks.passes import AdversarialStep, Pass, checked_lookup_gradients, no_lookup_error, planned_step

__all__ = ["install", "uninstall", "is_installed", "is_compiled", "AdversarialTrainStep", "noise"]

# The rest of the stack contract, the same on every Keras 3 backend.
is_compiled, is_installed, uninstall = keras3.is_compiled, keras3.is_installed, keras3.uninstall

TORCH_COMPILE_NOT_SUPPORTED = (
    "keras_adv's PyTorch step runs eagerly: under `jit_compile=True` Keras "
    "hands the step to `torch.compile`, whose tracing does not see the "
    "gradients w.r.t. the embedding lookups that the step takes. Compile the "
    "model with jit_compile=False (the default on PyTorch), or use the JAX or "
    "TensorFlow backend for a compiled step."
)


class AdversarialTrainStep(AdversarialStep):
    """A Keras 3 PyTorch `train_step` with embedding-space adversarial training."""

    def __call__(self, model, data):
        if model.jit_compile:  # A `compile(jit_compile=True)` after the call.
            raise NotImplementedError(TORCH_COMPILE_NOT_SUPPORTED)
        keras3.check_embedding(self.layer)
        passes = _Passes(self, model, data)
        outcome, adversarial = planned_step(self, passes)
        with torch.no_grad():
            model.optimizer.apply(outcome.gradients, passes.trainable)
        with keras3.reporting(model, outcome.term, keras3.batch_size(passes.x) * adversarial):
            return model.compute_metrics(passes.x, passes.y, outcome.predictions, passes.sample_weight)


class _Passes(keras3.Keras3Passes):
    """The plans' adapter (`passes.py`) for one PyTorch step."""

    def __init__(self, step, model, data):
        self.x, self.y, self.sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self.step, self.model, self.layer = step, model, step.layer
        self.optimizer = model.optimizer
        self.trainable = model.trainable_weights[:]
        # Read to the host once per step: the warm-up switch and the noise's seed.
        self.iterations = keras3.update_count(self.optimizer)
        self.step_count = int(self.iterations)

    def _forward(self, clean=False, reference=None, substitutes=()):
        track = lambda loss: self.model._loss_tracker.update_state(loss, sample_weight=keras3.batch_size(self.x))
        return keras3.forward(self.model, self.x, self.y, self.sample_weight, self.divergence, track,
                              clean, reference, substitutes)

    def run(self, perturbation_at=None, *, weights=False, lookup_gradients=False, scale=None, clean=False,
            reference=None, shifted=None):
        substitutes = [(self.trainable[i], self.trainable[i].value + r) for i, r in (shifted or {}).items()]

        def transform(index, ids, outputs):
            if perturbation_at is not None:
                outputs = outputs + ops.cast(perturbation_at(index, ids, outputs), outputs.dtype)
            return _differentiable(outputs) if lookup_gradients else outputs

        with tapped_lookups(self.layer, transform) as lookups:
            scaled, loss, y_pred = self._forward(clean, reference, substitutes)
        if self.layer is not None and not lookups.outputs:
            raise no_lookup_error(self.layer)
        if scale is not None:
            scaled = scaled * scale
        variables = [w.value for w in self.trainable] if weights else []
        sources = variables + (lookups.outputs if lookup_gradients else [])
        grads = list(torch.autograd.grad(scaled, sources, allow_unused=True)) if sources else []
        lookup_grads = None
        if lookup_gradients:
            lookup_grads = checked_lookup_gradients(self.layer, lookups, grads[len(variables):])
        return Pass(loss.detach(), grads[:len(variables)], lookups, lookup_grads, y_pred)

    def differentiate(self, objective):
        def forward(clean=False, lookup_gradients=False):
            transform = lambda index, ids, outputs: _differentiable(outputs)
            # PyTorch's fused attention kernels have no second derivative; its
            # "math" kernel, the same attention, has one: chosen for such a pass.
            with tapped_lookups(self.layer if lookup_gradients else None, transform) as lookups, \
                    _twice_differentiable_attention(lookup_gradients):
                scaled, loss, y_pred = self._forward(clean)
            lookup_grads = None
            if lookup_gradients:
                if not lookups.outputs:
                    raise no_lookup_error(self.layer)
                grads = torch.autograd.grad(loss, lookups.outputs, create_graph=True, allow_unused=True)
                lookup_grads = checked_lookup_gradients(self.layer, lookups, grads)
            return scaled, Pass(loss, None, lookups, lookup_grads, y_pred)

        total, aux = objective(forward)
        grads = list(torch.autograd.grad(total, [w.value for w in self.trainable], allow_unused=True))
        return grads, keras.tree.map_structure(lambda t: t.detach() if torch.is_tensor(t) else t, aux)

    def scale_loss(self, term, like):
        return self.optimizer.scale_loss(term.to(like.dtype))

    @property
    def matrix(self):
        return self.layer.embeddings.value

    def noise(self, index, like, kind):
        return noise(kind, self.step.seed, self.step_count, index, tuple(like.shape), like.device)

    def cond(self, start_step, adversarial, plain):
        on = self.step_count >= start_step
        return (adversarial() if on else plain()), on

    @staticmethod
    def add(a, b):
        return b if a is None else a if b is None else a + b

    def weight_values(self, indices):
        return [self.trainable[i].value.detach() for i in indices]

    def dense(self, gradients, indices):
        # A weight the loss does not use has no gradient: AWP then leaves it as it is.
        return [torch.zeros_like(self.trainable[i].value) if g is None else g for g, i in zip(gradients, indices)]


def _twice_differentiable_attention(needed):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH]) if needed else contextlib.nullcontext()


def noise(kind, seed, step_count, index, shape, device=None):
    """The step's "normal" or "uniform" in [-1, 1] noise for lookup `index`, from
    a generator seeded by `seed`, the step count and the index."""
    generator = torch.Generator(device=device or "cpu")
    generator.manual_seed((seed + index) * 1_000_003 + step_count)
    if kind == "normal":
        return torch.randn(shape, generator=generator, device=device)
    return torch.rand(shape, generator=generator, device=device) * 2 - 1


def _differentiable(outputs):
    """A lookup's outputs, made a leaf that autograd differentiates where the
    embedding is frozen (nothing upstream requires a gradient)."""
    return outputs if outputs.requires_grad else outputs.detach().requires_grad_()


def install(model, layer, settings):
    """Replaces the model's `train_step` with an adversarial one."""
    if model.jit_compile:
        raise NotImplementedError(TORCH_COMPILE_NOT_SUPPORTED)
    keras3.install_train_step(model, AdversarialTrainStep(layer, settings))
