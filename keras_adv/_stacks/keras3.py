"""What the Keras 3 stacks share, whatever the backend.

Keras's own train steps (`keras/src/backend/*/trainer.py`) use a few private
hooks of the model; they are kept here, in one place. So is the metric that
reports the adversarial loss.
"""

import contextlib

import keras
from keras import ops

from keras_adv._stacks import outputs
from keras_adv._stacks.instance_patch import install_step, installed_step, uninstall_step
from keras_adv._stacks.passes import AdversarialStep
from keras_adv._stacks.rows import KERAS_OPS, padding_masks, perturbation_space

__all__ = [
    "is_compiled", "is_installed", "install_train_step", "uninstall", "compute_loss", "forward", "batch_size",
    "AdversarialLossMean", "adversarial_loss_metric", "update_count", "check_embedding", "reporting",
    "Keras3Passes", "LORA_EMBEDDING_NOT_SUPPORTED",
]

LORA_EMBEDDING_NOT_SUPPORTED = (
    "keras_adv cannot train embedding layer '{name}' adversarially: LoRA is enabled on it "
    "(`enable_lora`), so its `embeddings` is a tensor computed from a frozen matrix and "
    "two low-rank factors, not the matrix variable that keras_adv reads. Keep LoRA off the "
    "embedding: with KerasHub, `backbone.enable_lora(rank)` (its default target layers) "
    "freezes the token embedding without adding LoRA to it, and every method still perturbs "
    "its lookups while the LoRA factors train. Or use AWP (`method='awp'`), which perturbs "
    "weights, not an embedding."
)


class Keras3Passes:
    """What the plans' adapters (`passes.py`) of Keras 3 on JAX and PyTorch
    share. They hold `step`, `model`, `layer`, `x` (the batch's inputs) and
    `matrix` (the embedding's value in the step)."""

    replicas = 1  # JAX's arrays are global (XLA adds the collectives); PyTorch runs on one device.

    def divergence(self, reference, y_pred):
        return outputs.divergence(self.model, self.step.settings.method, reference, y_pred)

    def space(self, lookups, per_example):
        masks = self.masks(lookups.ids) if per_example else None
        matrix = self.matrix
        return perturbation_space(KERAS_OPS, per_example, lookups, matrix.shape[1],
                                  lambda ids: ops.take(matrix, ids, axis=0), masks)

    def masks(self, ids_list):
        return padding_masks(KERAS_OPS, self.layer, ids_list, self.x)

    @staticmethod
    def stop_gradient(structure):
        return keras.tree.map_structure(ops.stop_gradient, structure)

    @property
    def selected(self):
        return self.step.settings.method.selected(self.model.trainable_variables, self.model.name)

    def reduce(self, gradients):
        return gradients  # Global arrays (JAX), or one device: the norms are the batch's.


def is_compiled(model):
    return bool(getattr(model, "compiled", False)) and model.optimizer is not None


def check_embedding(layer):
    """Refuses an embedding whose matrix is no variable (LoRA on it), at the
    call and in the step (LoRA enabled after the call)."""
    if layer is not None and getattr(layer, "lora_enabled", False):
        raise NotImplementedError(LORA_EMBEDDING_NOT_SUPPORTED.format(name=layer.name))


def install_train_step(model, step):
    """Binds `step` as the model's `train_step` and tracks its loss metric
    (made in the model's strategy scope on TensorFlow, where replicas sum into it)."""
    check_embedding(step.layer)
    install_step(model, "train_step", step, keras.Model.train_step)
    _detach_metric(model)  # An earlier call's, maybe of another name.
    metric_name = step.settings.method.reports  # What the method adds to History.
    if metric_name is None:  # The method adds nothing but its loss (NEFTune).
        return
    strategy = getattr(model, "distribute_strategy", None)  # TensorFlow only.
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model._metrics.append(AdversarialLossMean(metric_name))


def is_installed(model):
    return installed_step(model, "train_step", AdversarialStep) is not None


def uninstall(model):
    uninstall_step(model, "train_step")
    _detach_metric(model)


def _detach_metric(model):
    metric = adversarial_loss_metric(model)
    if metric is not None:
        model._metrics.remove(metric)


def compute_loss(model, x, y, y_pred, sample_weight):
    # `_compute_loss` handles overrides written before the `training` argument.
    return model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)


def update_count(optimizer, optimizer_variables=None):
    """`optimizer.iterations`, the update count that `start_step`, a schedule
    and the noise count, as a tensor. Under `gradient_accumulation_steps` it
    is computed from a counter of batches, so a JAX step reads it in a
    stateless scope over its `optimizer_variables`, as Keras reads its own."""
    if optimizer_variables is None:
        return ops.convert_to_tensor(optimizer.iterations)
    mapping = list(zip(optimizer.variables, optimizer_variables))
    with keras.StatelessScope(state_mapping=mapping):
        return ops.convert_to_tensor(optimizer.iterations)


def batch_size(x):
    """The batch size of `x`, a static int (what Keras weights its loss tracker by)."""
    return next(i for i in keras.tree.flatten(x) if i is not None).shape[0]


def forward(model, x, y, sample_weight, divergence, track_loss, clean=False, reference=None, substitutes=()):
    """A pass of a stateful backend (TensorFlow, PyTorch): `(loss to
    differentiate, loss, predictions)`.

    The clean pass runs as Keras's own step, `track_loss(loss)` updating the
    loss tracker. The others run stateless, reading each `(variable, value)`
    of `substitutes` as `value`, their loss `divergence(reference, outputs)`
    where a `reference` is given; they keep their updates of non-trainable
    state (batch-norm statistics, dropout seeds), not their metrics'.
    """
    if clean:
        y_pred = model(x, training=True)
        loss = compute_loss(model, x, y, y_pred, sample_weight)
        track_loss(loss)
        return model.optimizer.scale_loss(loss), loss, y_pred
    with keras.StatelessScope(state_mapping=substitutes, collect_losses=True) as scope:
        y_pred = model(x, training=True)
        loss = compute_loss(model, x, y, y_pred, sample_weight) if reference is None else None
    for variable in model.non_trainable_variables:
        value = scope.get_current_value(variable)
        if value is not None:
            variable.assign(value)
    if reference is not None:
        loss = divergence(reference, y_pred)
    return model.optimizer.scale_loss(loss), loss, y_pred


class AdversarialLossMean(keras.metrics.Mean):
    """The running mean of the method's term (`method.reports`), reported by
    the train step only.

    The model tracks it, so a pure JAX step holds its variables and it resets
    with Keras's metrics every epoch; its `result()` is empty except inside
    `reporting()`, so `evaluate` does not report it. The model gains no
    variable (`model.variables` holds no metric).
    """

    def __init__(self, name="adversarial_loss"):
        super().__init__(name=name)
        self._reporting = False

    def result(self):
        return {self.name: super().result()} if self._reporting else {}


@contextlib.contextmanager
def reporting(model, value, weight):
    """Inside the block, where the step computes its logs, the model's
    `AdversarialLossMean` reports its mean, `value` added with `weight` (the
    batch size, 0 in a warm-up step); nothing for a method that adds no term."""
    metric = adversarial_loss_metric(model)
    if metric is None:
        yield
        return
    metric.update_state(value, sample_weight=weight)
    metric._reporting = True
    try:
        yield
    finally:
        metric._reporting = False


def adversarial_loss_metric(model):
    """The model's `AdversarialLossMean`, or None."""
    return next((m for m in model._metrics if isinstance(m, AdversarialLossMean)), None)
