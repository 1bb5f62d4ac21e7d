"""Keras 3 on the TensorFlow backend: an adversarial `train_step` on the model
instance (`fit`, `steps_per_execution`, `jit_compile` and strategies go
through it), following `keras/src/backend/tensorflow/trainer.py`, its passes
on tapes (`tf_tape.py`).
"""

import functools

import keras
import tensorflow as tf
from keras.src.losses.loss import scale_loss_for_distribution, unscale_loss_for_distribution

from keras_adv._stacks import distribution, keras3, outputs
from keras_adv._stacks.passes import AdversarialStep, planned_step
from keras_adv._stacks.tf_tape import TapePasses, noise

__all__ = ["install", "uninstall", "is_installed", "is_compiled", "AdversarialTrainStep", "noise"]

# The rest of the stack contract, the same on every Keras 3 backend.
is_compiled, is_installed, uninstall = keras3.is_compiled, keras3.is_installed, keras3.uninstall


def _batch_size(x, weight=True):
    """The batch's size (this replica's), times `weight` (0 or 1)."""
    size = tf.shape(next(i for i in tf.nest.flatten(x) if i is not None))[0]
    return size * tf.cast(weight, size.dtype)


def _track_loss(tracker, loss, x):
    tracker.update_state(unscale_loss_for_distribution(loss), sample_weight=_batch_size(x))


def _switch_off_copy_on_read(variable):
    # Keras 3 reads the whole matrix for a lookup. Those reads alias the
    # variable unless it is in copy-on-read mode, which a sparse optimizer
    # update (SGD's) switches on: then every read copies the V x d matrix
    # (measured: 1 ms -> 220 ms per lookup at 250000 x 256), once per pass.
    # Safe at any time: a later sparse write copies the buffer first if a
    # read still aliases it.
    tf.raw_ops.DisableCopyOnRead(resource=variable.value.handle)


class AdversarialTrainStep(AdversarialStep):
    """A Keras 3 TensorFlow `train_step` with embedding-space adversarial training."""

    def __call__(self, model, data):
        keras3.check_embedding(self.layer)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # XLA has no copy-on-read mode, nor this op; a layer not built yet
        # makes its matrix in this step, fresh.
        if not model.jit_compile and self.layer is not None and self.layer.built:
            _switch_off_copy_on_read(self.layer.embeddings)

        def divergence(reference, y_pred):
            return scale_loss_for_distribution(outputs.divergence(model, self.settings.method, reference, y_pred))

        forward = functools.partial(
            keras3.forward, model, x, y, sample_weight, divergence,
            lambda loss: _track_loss(model._loss_tracker, loss, x),
        )
        passes = TapePasses(self, model, x, forward, model.optimizer.scale_loss, divergence)
        outcome, adversarial = planned_step(self, passes)
        model.optimizer.apply_gradients(zip(outcome.gradients, model.trainable_variables))
        # Warm-up steps (`start_step`) add nothing to the mean.
        with keras3.reporting(model, unscale_loss_for_distribution(outcome.term), _batch_size(x, adversarial)):
            return model.compute_metrics(x, y, outcome.predictions, sample_weight=sample_weight)


def install(model, layer, settings):
    """Replaces the model's `train_step` with an adversarial one."""
    strategy = model.distribute_strategy
    distribution.check_strategy(strategy, multi_worker=False)
    keras3.install_train_step(model, AdversarialTrainStep(layer, settings))
