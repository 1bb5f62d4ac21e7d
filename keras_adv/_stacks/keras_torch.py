"""Keras 3 on the PyTorch backend.

The model instance gets an adversarial `train_step(data)`, following
`keras/src/backend/torch/trainer.py`: eager passes, gradients from autograd,
`optimizer.apply` under `torch.no_grad()`. The passes are those of
`passes.py`, the perturbation added at the embedding lookups (`lookup.py`)
and the gradients w.r.t. the lookups' outputs taken by `torch.autograd.grad`:
the matrix is never written, so a step that raises leaves it as it was.
"""

import keras
import torch
from keras import ops

from keras_adv._stacks import keras3, outputs
from keras_adv._stacks.instance_patch import installed_step
from keras_adv._stacks.lookup import tapped_lookups
from keras_adv._stacks.ops_rows import padding_masks, perturbation_space, random_start
from keras_adv._stacks.passes import (
    AdversarialStep, Pass, attack, epsilon_now, free_lb, no_lookup_error,
    no_lookup_gradient_error, penalty_term, selected_weights, update_gradients, virtual_adversarial,
    weight_attack,
)
from keras_adv.methods import AWP, VAT, FreeLB

__all__ = ["install", "uninstall", "is_installed", "is_compiled", "AdversarialTrainStep", "vat_noise"]

is_compiled = keras3.is_compiled

TORCH_COMPILE_NOT_SUPPORTED = (
    "keras_adv's PyTorch step runs eagerly: under `jit_compile=True` Keras "
    "hands the step to `torch.compile`, whose tracing does not see the "
    "gradients w.r.t. the embedding lookups that the step takes. Compile the "
    "model with jit_compile=False (the default on PyTorch), or use the JAX or "
    "TensorFlow backend for a compiled step."
)


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


class AdversarialTrainStep(AdversarialStep):
    """A Keras 3 PyTorch `train_step` with embedding-space adversarial training."""

    def __call__(self, model, data):
        if model.jit_compile:  # A `compile(jit_compile=True)` after the call.
            raise NotImplementedError(TORCH_COMPILE_NOT_SUPPORTED)
        keras3.check_embedding(self.layer)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        settings, optimizer = self.settings, model.optimizer
        trainable = model.trainable_weights[:]
        # Read once per step (a host sync on a GPU): the update count, a
        # tensor (not a variable under `gradient_accumulation_steps`), and
        # its value, for the warm-up switch and the noise's seed.
        iterations = keras3.update_count(optimizer)
        step_count = int(iterations)
        adversarial = step_count >= settings.start_step

        def clean_forward():
            y_pred = model(x, training=True)
            loss = keras3.compute_loss(model, x, y, y_pred, sample_weight)
            model._loss_tracker.update_state(loss, sample_weight=keras3.batch_size(x))
            return optimizer.scale_loss(loss), loss, y_pred

        def perturbed_forward(shifted=()):
            _, loss = keras3.perturbed_loss(model, x, y, sample_weight, shifted)
            return optimizer.scale_loss(loss), loss, None

        if adversarial and settings.method.steps == 0:  # The gradient penalty.
            clean, adversarial_loss = self._penalized_pass(clean_forward, trainable, optimizer, x)
            gradients = clean.gradients
        elif adversarial and isinstance(settings.method, FreeLB):
            clean, gradients, adversarial_loss = self._free_lb(
                clean_forward, perturbed_forward, trainable, iterations, step_count, x
            )
        elif adversarial and isinstance(settings.method, VAT):
            clean, gradients, adversarial_loss = self._virtual_adversarial(
                model, clean_forward, trainable, iterations, step_count, x
            )
        elif adversarial and isinstance(settings.method, AWP):
            clean, gradients, adversarial_loss = self._weight_attack(
                model, clean_forward, perturbed_forward, trainable, iterations
            )
        elif not adversarial:  # A warm-up step (`start_step`): the clean pass alone.
            clean = _weight_pass(clean_forward, trainable)
            gradients, adversarial_loss = clean.gradients, None
        else:
            use_clean_weights = settings.objective == "sum"
            clean = self._pass(clean_forward, trainable if use_clean_weights else [])
            ids, outputs = clean.lookups.ids, clean.lookups.outputs
            masks = padding_masks(self.layer, ids, x) if settings.per_example else None
            space = perturbation_space(
                settings.per_example, ids, outputs, self.layer.embeddings.value, masks
            )

            def perturbed_pass(perturbation, last):
                return self._pass(
                    perturbed_forward, trainable if last else [],
                    perturbation_at=lambda index, ids: space.at(index, ids, perturbation),
                    lookup_gradients=not last,
                )

            epsilon = epsilon_now(settings, iterations)
            last = attack(self, space, clean, perturbed_pass, epsilon)
            gradients = update_gradients(settings.objective, clean.gradients, last.gradients, _add)
            adversarial_loss = last.loss

        with torch.no_grad():
            optimizer.apply(gradients, trainable)
        metric = keras3.adversarial_loss_metric(model)
        if adversarial_loss is not None:
            metric.update_state(adversarial_loss, sample_weight=keras3.batch_size(x))
        with metric.reporting():
            return model.compute_metrics(x, y, clean.predictions, sample_weight=sample_weight)

    def _free_lb(self, clean_forward, perturbed_forward, weights, iterations, step_count, x):
        """FreeLB's K passes from its random start, every one's weight
        gradients (of L / K) summed: `(first Pass, gradients, mean loss)`."""
        method, layer = self.settings.method, self.layer
        steps = method.steps

        def random_start_at(index, ids):
            shape = tuple(ids.shape) + (layer.embeddings.shape[1],)
            generator = _generator(self.seed, step_count, index, ids.device)
            noise = torch.rand(shape, generator=generator, device=ids.device) * 2 - 1
            return random_start(method, noise, padding_masks(layer, [ids], x)[0])

        starts = []

        def recorded_start_at(index, ids):
            starts.append(random_start_at(index, ids))
            return starts[-1]

        def first_pass():
            first = self._pass(
                clean_forward, weights,
                perturbation_at=recorded_start_at if method.init_magnitude else None,
                lookup_gradients=steps > 1, scale=1 / steps,
            )
            return first, starts

        def space_of(first):
            ids = first.lookups.ids
            return perturbation_space(
                True, ids, first.lookups.outputs, layer.embeddings.value, padding_masks(layer, ids, x)
            )

        def perturbed_pass(space, perturbation, last):
            return self._pass(
                perturbed_forward, weights,
                perturbation_at=lambda index, ids: space.at(index, ids, perturbation),
                lookup_gradients=not last, scale=1 / steps,
            )

        epsilon = epsilon_now(self.settings, iterations)
        return free_lb(self, first_pass, space_of, perturbed_pass, _add, epsilon)

    def _virtual_adversarial(self, model, clean_forward, trainable, iterations, step_count, x):
        """VAT: the clean pass, the power iterations on the divergence from
        its outputs, and the divergence at the perturbation, weighted:
        `(clean Pass, gradients, divergence)`."""
        method, layer, optimizer = self.settings.method, self.layer, model.optimizer
        clean = self._pass(clean_forward, trainable, lookup_gradients=False)
        ids = clean.lookups.ids
        space = perturbation_space(
            True, ids, clean.lookups.outputs, layer.embeddings.value, padding_masks(layer, ids, x)
        )
        reference = keras.tree.map_structure(lambda t: t.detach(), clean.predictions)

        def divergence_forward():
            divergence = outputs.divergence(model, method, reference, keras3.perturbed_outputs(model, x))
            return optimizer.scale_loss(divergence), divergence, None

        def divergence_pass(perturbation, last):
            return self._pass(
                divergence_forward, trainable if last else [],
                perturbation_at=lambda index, ids: space.at(index, ids, perturbation),
                lookup_gradients=not last, scale=method.weight if last else None,
            )

        noises = [vat_noise(self.seed, step_count, index, tuple(output.shape), output.device)
                  for index, output in enumerate(clean.lookups.outputs)]
        epsilon = epsilon_now(self.settings, iterations)
        last = virtual_adversarial(self, space, noises, divergence_pass, epsilon)
        gradients = update_gradients("sum", clean.gradients, last.gradients, _add)
        return clean, gradients, last.loss

    def _weight_attack(self, model, clean_forward, perturbed_forward, trainable, iterations):
        """AWP: the perturbed passes read perturbed copies of the selected
        weights (the variables are never written): `(clean Pass, gradients,
        adversarial loss)`."""
        settings = self.settings
        indices = selected_weights(settings.method, trainable, model.name)
        selected = [trainable[i] for i in indices]
        clean = _weight_pass(clean_forward, trainable)

        def perturbed_pass(perturbations):
            return _weight_pass(
                lambda: perturbed_forward([(v, v.value + r) for v, r in zip(selected, perturbations)]),
                trainable,
            )

        epsilon = epsilon_now(settings, iterations)
        last, gradients = weight_attack(
            self, clean, indices, [v.value.detach() for v in selected], perturbed_pass, _add,
            dense=lambda gradients: _dense(gradients, selected), epsilon=epsilon,
        )
        return clean, gradients, last.loss

    def _penalized_pass(self, forward, weights, optimizer, x):
        """The clean pass, its loss plus the penalty on its lookups' gradient,
        differentiated (twice) w.r.t. `weights`: `(Pass, penalty)`."""
        settings = self.settings
        # PyTorch has no second derivative of its fused attention kernels
        # (flash, memory-efficient); its reference "math" kernel has one,
        # and computes the same attention. Chosen for this pass alone.
        with tapped_lookups(self.layer, _differentiable) as lookups, _twice_differentiable_attention():
            loss, reported, predictions = forward()
        if not lookups.outputs:
            raise no_lookup_error(self.layer)
        lookup_grads = torch.autograd.grad(
            reported, lookups.outputs, create_graph=True, allow_unused=True
        )
        if all(g is None for g in lookup_grads):
            raise no_lookup_gradient_error(self.layer)
        lookup_grads = [
            torch.zeros_like(o) if g is None else g for o, g in zip(lookups.outputs, lookup_grads)
        ]
        ids, outputs = lookups.ids, lookups.outputs
        masks = padding_masks(self.layer, ids, x) if settings.per_example else None
        space = perturbation_space(
            settings.per_example, ids, outputs, self.layer.embeddings.value, masks
        )
        penalty = penalty_term(settings, space, space.rows(ids, lookup_grads))
        total = loss + optimizer.scale_loss(penalty.to(loss.dtype))
        grads = torch.autograd.grad(total, [w.value for w in weights], allow_unused=True)
        return Pass(reported.detach(), list(grads), lookups, None, predictions), penalty.detach()

    def _pass(self, forward, weights, perturbation_at=None, lookup_gradients=True, scale=None):
        """Runs `forward()` with the lookups perturbed; differentiates the
        loss (times `scale`, if given) w.r.t. `weights` and (unless asked not
        to) the lookups' outputs."""

        def transform(index, ids, outputs):
            if perturbation_at is not None:
                outputs = outputs + ops.cast(perturbation_at(index, ids), outputs.dtype)
            return _differentiable(index, ids, outputs)

        with tapped_lookups(self.layer, transform) as lookups:
            loss, reported, predictions = forward()
        if scale is not None:
            loss = loss * scale
        if not lookups.outputs:
            raise no_lookup_error(self.layer)
        sources = [w.value for w in weights] + (lookups.outputs if lookup_gradients else [])
        grads = list(torch.autograd.grad(loss, sources, allow_unused=True)) if sources else []
        lookup_grads = None
        if lookup_gradients:
            lookup_grads = grads[len(weights):]
            if all(g is None for g in lookup_grads):
                raise no_lookup_gradient_error(self.layer)
            lookup_grads = [
                torch.zeros_like(o) if g is None else g for o, g in zip(lookups.outputs, lookup_grads)
            ]
        return Pass(reported.detach(), grads[: len(weights)], lookups, lookup_grads, predictions)


def _twice_differentiable_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def vat_noise(seed, step_count, index, shape, device=None):
    """VAT's standard normal noise for lookup `index`: a function of `seed`,
    the step count and the index, from a generator of its own (the model
    gains no random state)."""
    return torch.randn(shape, generator=_generator(seed, step_count, index, device), device=device)


def _generator(seed, step_count, index, device):
    """A generator of its own for lookup `index` at a step, seeded from the
    step's seed and count alone (the model gains no random state)."""
    generator = torch.Generator(device=device or "cpu")
    generator.manual_seed((seed + index) * 1_000_003 + step_count)
    return generator


def _weight_pass(forward, weights):
    """Runs `forward()`; differentiates its loss w.r.t. `weights` (no lookups)."""
    loss, reported, predictions = forward()
    grads = torch.autograd.grad(loss, [w.value for w in weights], allow_unused=True)
    return Pass(reported.detach(), list(grads), None, None, predictions)


def _dense(gradients, weights):
    # A weight the loss does not use has no gradient: AWP then leaves it as it is.
    return [torch.zeros_like(w.value) if g is None else g for g, w in zip(gradients, weights)]


def _differentiable(index, ids, outputs):
    """A lookup's outputs, made a leaf that autograd differentiates where the
    embedding is frozen (nothing upstream requires a gradient)."""
    del index, ids
    return outputs if outputs.requires_grad else outputs.detach().requires_grad_()


def is_installed(model):
    return installed_step(model, "train_step", AdversarialTrainStep) is not None


def install(model, layer, settings):
    """Replaces the model's `train_step` with an adversarial one."""
    if model.jit_compile:
        raise NotImplementedError(TORCH_COMPILE_NOT_SUPPORTED)
    keras3.install_train_step(model, AdversarialTrainStep(layer, settings))


def uninstall(model):
    keras3.uninstall_train_step(model)
