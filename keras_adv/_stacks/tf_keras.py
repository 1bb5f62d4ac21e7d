"""tf-keras 2 (as used by bert4keras) with eager execution (the default): an
adversarial `train_step` on the model instance, following tf-keras's own, its
passes on tapes (`tf_tape.py`), AWP's reading perturbed copies of the weights
(`tf_keras_weights.py`). The loss trackers see the clean pass only; with a
loss-scale optimizer the weight gradients are unscaled before the update, as
`optimizer.minimize` does.
"""

import tensorflow as tf

from keras_adv._stacks import distribution, outputs
from keras_adv._stacks.instance_patch import install_step, installed_step, uninstall_step
from keras_adv._stacks.passes import AdversarialStep, planned_step
from keras_adv._stacks.tf_keras_weights import substituted_weights
from keras_adv._stacks.tf_tape import TapePasses, noise

__all__ = [
    "install", "uninstall", "is_installed", "is_compiled", "AdversarialTrainStep", "noise",
    "scaled_loss", "unscaled_gradients",
]


def _tf_keras():
    import tf_keras

    return tf_keras


def scaled_loss(optimizer, loss):
    # tf-keras's LossScaleOptimizer (mixed precision) scales the loss itself.
    scale = getattr(optimizer, "get_scaled_loss", None)
    return loss if scale is None else scale(loss)


def unscaled_gradients(optimizer, grads):
    unscale = getattr(optimizer, "get_unscaled_gradients", None)
    return grads if unscale is None else unscale(grads)


def _create_step_count_eagerly(optimizer):
    """Creates the optimizer's step count outside the traced step, as its own
    `apply_gradients` does: the passes read it first, and a legacy optimizer
    (bert4keras's) creates it on its first read, which inside the step fails
    under MirroredStrategy ("You must feed a value for placeholder tensor")."""
    with tf.init_scope():
        return optimizer.iterations


def _unscaled_for_distribution(loss):
    # `compute_loss` divides the loss by the replica count (the gradients are
    # summed); tf-keras's loss tracker sees it before that.
    return loss * tf.distribute.get_strategy().num_replicas_in_sync


class AdversarialTrainStep(AdversarialStep):
    """A tf-keras `train_step` with embedding-space adversarial training."""

    def __init__(self, layer, settings, strategy):
        super().__init__(layer, settings)
        # In the model's strategy scope, so that replicas sum into it.
        self.adversarial_loss = None
        if settings.method.reports is not None:
            with strategy.scope():
                self.adversarial_loss = _tf_keras().metrics.Mean(name=settings.method.reports)
        # The model's `distribute_reduction_method` before the line (`install`).
        self.reduction_before = "auto"

    def __call__(self, model, data):
        tf_keras = _tf_keras()
        x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
        optimizer = model.optimizer
        _create_step_count_eagerly(optimizer)
        if self.adversarial_loss is not None:
            # The "loss" mean (`compiled_loss.metrics` lists it only after a loss).
            self._reset_with(model.compiled_loss._total_loss_mean)

        def forward(clean=False, reference=None, substitutes=()):
            with substituted_weights(model, substitutes):
                y_pred = model(x, training=True)
            if clean:
                loss = model.compute_loss(x, y, y_pred, sample_weight)
            elif reference is not None:
                loss = divergence(reference, y_pred)
            else:
                loss = self._untracked_loss(model, x, y, y_pred, sample_weight)
            return scaled_loss(optimizer, loss), loss, y_pred

        def divergence(reference, y_pred):
            # Summed across replicas, as `compute_loss` divides the loss.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            return outputs.divergence(model, self.settings.method, reference, y_pred) / replicas

        passes = TapePasses(self, model, x, forward, lambda loss: scaled_loss(optimizer, loss), divergence)
        outcome, adversarial = planned_step(self, passes)
        optimizer.apply_gradients(zip(unscaled_gradients(optimizer, outcome.gradients), model.trainable_variables))
        logs = dict(model.compute_metrics(x, y, outcome.predictions, sample_weight))
        if self.adversarial_loss is not None:
            # Warm-up steps (`start_step`) add nothing to the mean.
            weight = tf.shape(tf.nest.flatten(x)[0])[0] * tf.cast(adversarial, tf.int32)
            self.adversarial_loss.update_state(_unscaled_for_distribution(outcome.term), sample_weight=weight)
            logs[self.adversarial_loss.name] = self.adversarial_loss.result()
        return logs

    def _untracked_loss(self, model, x, y, y_pred, sample_weight):
        # `compute_loss` updates the loss trackers: put back for a perturbed pass.
        variables = [v for metric in model.compiled_loss.metrics for v in metric.variables]  # "loss", per output
        saved = [tf.identity(v) for v in variables]
        loss = model.compute_loss(x, y, y_pred, sample_weight)
        with tf.control_dependencies([loss]):
            for variable, value in zip(variables, saved):
                variable.assign(value)
        return loss

    def _reset_with(self, loss_tracker):
        # A "loss" count of 0: tf-keras reset its metrics (a new epoch), so this does.
        fresh = tf.equal(loss_tracker.count, 0)
        for variable in self.adversarial_loss.variables:
            variable.assign(tf.where(fresh, tf.zeros_like(variable), variable))


def is_compiled(model):
    return getattr(model, "optimizer", None) is not None and getattr(model, "compiled_loss", None) is not None


def is_installed(model):
    return installed_step(model, "train_step", AdversarialTrainStep) is not None


# How `fit` reduces the step's logs across replicas. They are metric results,
# which every replica holds for the global batch; the default, "auto", sums
# them under MultiWorkerMirroredStrategy (N workers, N times the value; plain
# History escapes it by reading `model.metrics` again, where the adversarial
# loss is not), so they are taken from one replica.
_ONE_REPLICA = "first"


def _take_logs_from_one_replica(model, replaced_step):
    """Has `fit` take the step's logs from one replica, unless the user chose
    a reduction. Returns the reduction `uninstall` puts back."""
    if replaced_step is not None:  # The line called again: it set the reduction.
        return replaced_step.reduction_before
    before = model.distribute_reduction_method
    if before == "auto":
        model.distribute_reduction_method = _ONE_REPLICA
    return before


def install(model, layer, settings):
    """Replaces the model's `train_step` with an adversarial one."""
    strategy = model.distribute_strategy
    distribution.check_strategy(strategy, multi_worker=True)
    step = AdversarialTrainStep(layer, settings, strategy)
    replaced = installed_step(model, "train_step", AdversarialTrainStep)
    install_step(model, "train_step", step, _tf_keras().Model.train_step)
    step.reduction_before = _take_logs_from_one_replica(model, replaced)


def uninstall(model):
    step = installed_step(model, "train_step", AdversarialTrainStep)
    uninstall_step(model, "train_step")
    if model.distribute_reduction_method == _ONE_REPLICA and step.reduction_before == "auto":
        model.distribute_reduction_method = "auto"
