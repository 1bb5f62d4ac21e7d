"""tf-keras 2 (as used by bert4keras), eager execution (the default).

The model instance gets an adversarial `train_step`, following tf-keras's own
`Model.train_step`. tf-keras's Embedding reads its matrix with sparse gathers,
so the perturbed passes move only the touched rows of the variable in place
(`RowsInPlace`) and put them back from a copy, bit for bit, before the
optimizer runs. A step that raises in between is undone from Python: the
instance's `make_train_function` wraps tf-keras's train function with
`undo_on_failure`, which writes back the rows that the step's `UndoLog`
still holds (an XLA-compiled step needs none: it commits no variable unless it
runs to the end). The clean pass updates the compiled loss trackers as in
plain training; the perturbed passes leave them as they were.
"""

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
)

__all__ = ["install", "uninstall", "is_installed", "is_compiled", "AdversarialTrainStep"]


def _tf_keras():
    import tf_keras

    return tf_keras


# tf-keras's loss trackers: the "loss" mean and per-output losses.
def _loss_trackers(model):
    return model.compiled_loss.metrics


class AdversarialTrainStep(AdversarialStep):
    """A tf-keras `train_step` with embedding-space adversarial training."""

    def __init__(self, embedding, method, objective):
        super().__init__(embedding, method, objective)
        self.adversarial_loss = _tf_keras().metrics.Mean(name="adversarial_loss")
        self.undo_log = UndoLog(embedding)

    def __call__(self, model, data):
        tf_keras = _tf_keras()
        x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
        trackers = _loss_trackers(model)
        if trackers:  # Built by the first compute_loss of a fit.
            self._reset_with(trackers[0])
        trainable = list(model.trainable_variables)
        update_from_clean = self.objective == "sum"
        sources = trainable if update_from_clean else []

        with tf.GradientTape(watch_accessed_variables=bool(sources)) as tape:
            tape.watch(self.embedding)
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, sample_weight)
        clean_grads, embedding_grad = split_gradients(tape, loss, sources, self.embedding, self.embedding)
        if embedding_grad is None:
            raise ValueError(
                f"The loss does not depend on the embedding '{self.embedding.name}', "
                f"so it cannot be perturbed. Name the embedding layer that the "
                f"model's inputs go through."
            )
        touched = TouchedRows(embedding_grad)
        if model.jit_compile:
            # XLA orders the writes by data; its step cannot fail half-way.
            rows = RowsInPlaceUnderXla(self.embedding, touched)
        else:
            rows = RowsInPlace(self.embedding, touched, undo_log=self.undo_log)
        # What the last pass computed from its reads of the matrix.
        consumed = [loss, embedding_grad, *clean_grads]

        def perturbed_pass(perturbation, last):
            rows.move(perturbation, after=tensors_of(consumed))
            pass_sources = trainable if last else []
            with tf.GradientTape(watch_accessed_variables=bool(pass_sources)) as tape:
                tape.watch(self.embedding)
                adversarial_pred = model(x, training=True)
                adversarial_loss = self._untracked_loss(model, x, y, adversarial_pred, sample_weight)
            grads, gradient = split_gradients(
                tape, adversarial_loss, pass_sources, self.embedding, self.embedding
            )
            consumed[:] = [adversarial_loss, gradient, *grads]
            return adversarial_loss, grads, gradient

        adversarial_loss, adversarial_grads = attack(self.method, touched, embedding_grad, perturbed_pass)
        rows.restore(after=tensors_of(consumed))
        grads = update_gradients(self.objective, clean_grads, adversarial_grads, add_gradients)
        model.optimizer.apply_gradients(zip(grads, trainable))

        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        self.adversarial_loss.update_state(adversarial_loss, sample_weight=batch_size)
        logs = dict(model.compute_metrics(x, y, y_pred, sample_weight))
        logs["adversarial_loss"] = self.adversarial_loss.result()
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


def install(model, embedding, method, objective):
    """Replaces the model's `train_step` with an adversarial one."""
    step = AdversarialTrainStep(embedding, method, objective)
    install_step(model, "train_step", step, _tf_keras().Model.train_step)
    # Wraps whatever builds the train function, so no class override is lost.
    install_step(model, "make_train_function", UndoingTrainFunctionMaker(step.undo_log.undo))


def uninstall(model):
    uninstall_step(model, "train_step")
    uninstall_step(model, "make_train_function")
