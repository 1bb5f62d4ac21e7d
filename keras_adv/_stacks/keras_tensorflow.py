"""Keras 3 on the TensorFlow backend.

The model instance gets an adversarial `train_step` (Keras's `fit`,
`steps_per_execution`, `jit_compile` and callbacks all go through it). The
step follows `keras/src/backend/tensorflow/trainer.py` and adds the perturbed
passes:

1. The clean pass: loss, loss tracker, and the gradients it needs: all weights
   under `objective="sum"`, only the embedding under `"adversarial"`.
2. `method.steps` perturbed passes; intermediate ones (PGD) ask only for the
   embedding gradient. Each pass moves the touched rows of the variable in
   place (`RowsInPlace`), and they are put back from a copy, bit for bit,
   before the optimizer runs. Keras 3 reads the whole matrix for a lookup,
   and those reads alias the variable only while it is not in copy-on-read
   mode, which sparse writes switch on: so the step switches it off first
   and after every write, and each write waits until the pass before it has
   consumed its reads. No V x d tensor is made. A step that raises half-way
   is undone from Python (`UndoLog`, `undo_on_failure`). Under XLA, which
   has no kernel for that switch and orders ops by data alone, each write
   depends on what the pass before computed (`RowsInPlaceUnderXla`): still
   no V x d tensor, and an XLA step commits no variable unless it runs to
   the end.
3. One optimizer update from the clean + adversarial (or adversarial only)
   gradients, with the embedding gradient still an `IndexedSlices`.

Every pass runs in training mode and keeps its updates of the model's
non-trainable state (batch-norm statistics, dropout seeds), as in the
PyTorch recipes; loss-tracking metrics see only the clean pass.
"""

import keras
import tensorflow as tf

from keras_adv._stacks.instance_patch import (
    UndoingTrainFunctionMaker,
    install_step,
    installed_step,
    uninstall_step,
)
from keras_adv._stacks.passes import AdversarialStep, attack, split_gradients, update_gradients
from keras_adv._stacks.tf_rows import (
    RowsInPlace,
    RowsInPlaceUnderXla,
    TouchedRows,
    UndoLog,
    add_gradients,
    tensors_of,
    switch_off_copy_on_read,
)

__all__ = ["install", "uninstall", "is_installed", "is_compiled", "AdversarialTrainStep"]


# Keras's own train_step uses these private hooks; they are kept in one place.
def _compute_loss(model, x, y, y_pred, sample_weight):
    # Handles `compute_loss` overrides written before the `training` argument.
    return model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )


def _loss_tracker(model):
    return model._loss_tracker


def _track_loss(tracker, loss, x):
    from keras.src.losses.loss import unscale_loss_for_distribution

    batch_size = tf.shape(next(i for i in tf.nest.flatten(x) if i is not None))[0]
    tracker.update_state(unscale_loss_for_distribution(loss), sample_weight=batch_size)


class AdversarialTrainStep(AdversarialStep):
    """A Keras 3 TensorFlow `train_step` with embedding-space adversarial training."""

    def __init__(self, embedding, method, objective):
        super().__init__(embedding, method, objective)
        # Held here, not on the model, so the model gains no tracked metric.
        # Reset together with Keras's loss tracker (see `_reset_with`).
        self.adversarial_loss = keras.metrics.Mean(name="adversarial_loss")
        self.undo_log = UndoLog(embedding.value)

    def __call__(self, model, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._reset_with(_loss_tracker(model))
        trainable = list(model.trainable_variables)
        update_from_clean = self.objective == "sum"
        variable = self.embedding.value
        under_xla = model.jit_compile
        if not under_xla:
            # A sparse optimizer update (SGD's) leaves the variable copying
            # the matrix at every read; this step's reads need not.
            switch_off_copy_on_read(variable)

        clean_loss, clean_grads, embedding_grad, y_pred = self._clean_pass(
            model, x, y, sample_weight, trainable if update_from_clean else []
        )
        touched = TouchedRows(embedding_grad)
        if under_xla:
            rows = RowsInPlaceUnderXla(variable, touched)
        else:
            rows = RowsInPlace(variable, touched, dense_reads=True, undo_log=self.undo_log)
        # What the last pass computed from its reads of the matrix.
        consumed = [clean_loss, embedding_grad, *clean_grads]

        def perturbed_pass(perturbation, last):
            rows.move(perturbation, after=tensors_of(consumed))
            sources = trainable if last else []
            loss, grads, gradient = self._perturbed_pass(model, x, y, sample_weight, sources)
            consumed[:] = [loss, gradient, *grads]
            return loss, grads, gradient

        adversarial_loss, adversarial_grads = attack(
            self.method, touched, embedding_grad, perturbed_pass
        )
        rows.restore(after=tensors_of(consumed))
        grads = update_gradients(self.objective, clean_grads, adversarial_grads, add_gradients)
        model.optimizer.apply_gradients(zip(grads, trainable))

        _track_loss(self.adversarial_loss, adversarial_loss, x)
        logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        logs = dict(logs)
        logs["adversarial_loss"] = self.adversarial_loss.result()
        return logs

    def _reset_with(self, loss_tracker):
        # Keras resets its metrics at the start of every epoch; a count of 0
        # says this is the first step since, so the running mean starts over.
        fresh = tf.equal(loss_tracker.count, 0)
        for variable in self.adversarial_loss.variables:
            variable.assign(tf.where(fresh, tf.zeros_like(variable), variable))

    def _clean_pass(self, model, x, y, sample_weight, sources):
        """Returns (loss, gradients of `sources`, embedding gradient, y_pred)."""
        embedding = self.embedding.value
        # Without weight gradients to compute, record only what depends on E.
        with tf.GradientTape(watch_accessed_variables=bool(sources)) as tape:
            tape.watch(embedding)
            y_pred = model(x, training=True)
            loss = _compute_loss(model, x, y, y_pred, sample_weight)
            _track_loss(_loss_tracker(model), loss, x)
            loss = model.optimizer.scale_loss(loss)
        grads, embedding_grad = split_gradients(tape, loss, sources, self.embedding, embedding)
        if embedding_grad is None:
            raise ValueError(
                f"The loss does not depend on the embedding "
                f"'{self.embedding.path}', so it cannot be perturbed. Name the "
                f"embedding layer that the model's inputs go through."
            )
        return loss, grads, embedding_grad, y_pred

    def _perturbed_pass(self, model, x, y, sample_weight, sources):
        """Runs the model on the variable with its rows moved.

        Returns (loss, gradients of `sources`, gradient of the embedding).
        """
        embedding = self.embedding.value
        with tf.GradientTape(watch_accessed_variables=bool(sources)) as tape:
            tape.watch(embedding)
            with keras.StatelessScope(collect_losses=True) as scope:
                y_pred = model(x, training=True)
                # Inside the scope: regularizers see E + r, and the updates
                # that `compute_loss` makes to loss-tracking metrics are dropped.
                loss = _compute_loss(model, x, y, y_pred, sample_weight)
            scaled_loss = model.optimizer.scale_loss(loss)
        self._keep_state_updates(model, scope)
        grads, embedding_grad = split_gradients(tape, scaled_loss, sources, self.embedding, embedding)
        return loss, grads, embedding_grad

    def _keep_state_updates(self, model, scope):
        for variable in model.non_trainable_variables:
            if variable is self.embedding:
                continue
            value = scope.get_current_value(variable)
            if value is not None:
                variable.assign(value)


def is_compiled(model):
    return bool(getattr(model, "compiled", False)) and model.optimizer is not None


def is_installed(model):
    return installed_step(model, "train_step", AdversarialTrainStep) is not None


def install(model, embedding, method, objective):
    """Replaces the model's `train_step` with an adversarial one."""
    step = AdversarialTrainStep(embedding, method, objective)
    install_step(model, "train_step", step, keras.Model.train_step)
    # Wraps whatever builds the train function, so no class override is lost.
    install_step(model, "make_train_function", UndoingTrainFunctionMaker(step.undo_log.undo))


def uninstall(model):
    uninstall_step(model, "train_step")
    uninstall_step(model, "make_train_function")
