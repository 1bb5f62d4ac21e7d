"""tf-keras 2 (as used by bert4keras), eager execution (the default).

The model instance gets an adversarial `train_step`, following tf-keras's own
`Model.train_step`, that runs the plans of `passes.py` on tapes (`tf_tape.py`) with the perturbation
added at the embedding lookups (`lookup.py`): the matrix is never written.
AWP's passes read perturbed copies of the weights (`tf_keras_weights.py`):
no weight is written either.
The clean pass updates the compiled loss trackers as in plain training; the
perturbed passes leave them as they were. The step returns metric results,
the same on every replica, and `install` has `fit` take them from one
replica (`_ONE_REPLICA`), so that History holds the single-device values
under MultiWorkerMirroredStrategy too. With a loss-scale optimizer
(mixed precision) the passes differentiate the scaled loss and the weight
gradients are unscaled before the update, as `optimizer.minimize` does.
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


# tf-keras's loss trackers: the "loss" mean and per-output losses.
def _loss_trackers(model):
    return model.compiled_loss.metrics


def scaled_loss(optimizer, loss):
    # tf-keras's LossScaleOptimizer (mixed precision) scales the loss itself.
    scale = getattr(optimizer, "get_scaled_loss", None)
    return loss if scale is None else scale(loss)


def unscaled_gradients(optimizer, grads):
    unscale = getattr(optimizer, "get_unscaled_gradients", None)
    return grads if unscale is None else unscale(grads)


def _create_step_count_eagerly(optimizer):
    """Creates the optimizer's step count outside the traced step.

    The passes read `optimizer.iterations` (epsilon schedules, the warm-up,
    noise seeds) before `apply_gradients` runs. A legacy optimizer
    (bert4keras's, `tf_keras.optimizers.legacy`) creates that variable on its
    first read. Created inside the traced step under MirroredStrategy, its
    replicas' copies are initialised from the first one's there, which
    `tf.function` cannot lift out of the step, so the first step fails ("You
    must feed a value for placeholder tensor 'cond/else/...'"). Its own
    `apply_gradients` creates it under `tf.init_scope()` for this reason;
    this does the same, and reads an existing one as it is.
    """
    with tf.init_scope():
        return optimizer.iterations


def _unscaled_for_distribution(loss):
    # Under a strategy, `compute_loss` divides the loss by the replica count
    # (so that summed gradients are the global batch's); tf-keras's own loss
    # tracker sees it before that.
    return loss * tf.distribute.get_strategy().num_replicas_in_sync


class AdversarialTrainStep(AdversarialStep):
    """A tf-keras `train_step` with embedding-space adversarial training."""

    def __init__(self, layer, settings, strategy):
        super().__init__(layer, settings)
        # Made in the model's strategy scope, so that replicas sum into it
        # (none for a method that adds only its loss).
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
            # The "loss" mean, made by compile (`compiled_loss.metrics` lists it
            # only once a loss has been computed).
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
        # `compute_loss` updates the loss trackers; the perturbed passes must
        # not, so their state is put back after the call.
        variables = [v for metric in _loss_trackers(model) for v in metric.variables]
        saved = [tf.identity(v) for v in variables]
        loss = model.compute_loss(x, y, y_pred, sample_weight)
        with tf.control_dependencies([loss]):
            for variable, value in zip(variables, saved):
                variable.assign(value)
        return loss

    def _reset_with(self, loss_tracker):
        # tf-keras resets its metrics at the start of every epoch; a count of
        # 0 says this is the first step since, so the running mean starts over.
        fresh = tf.equal(loss_tracker.count, 0)
        for variable in self.adversarial_loss.variables:
            variable.assign(tf.where(fresh, tf.zeros_like(variable), variable))


def is_compiled(model):
    return getattr(model, "optimizer", None) is not None and getattr(model, "compiled_loss", None) is not None


def is_installed(model):
    return installed_step(model, "train_step", AdversarialTrainStep) is not None


# How `fit` reduces across replicas the logs that the step returns. They are
# metric results, which every replica already holds for the global batch
# (tf-keras aggregates metric state across replicas, workers included). The
# default, "auto", is a SUM on every strategy but TPUStrategy: under
# MultiWorkerMirroredStrategy it adds up the workers' equal copies (N workers,
# N times the value), in plain training too (its per-batch logs). Plain
# History escapes it only because `fit` reads the epoch's values again from
# `model.metrics` when the logs name nothing else; the adversarial loss is not
# among them (a metric there would join `evaluate`'s results), so the logs
# are taken from one replica instead.
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
