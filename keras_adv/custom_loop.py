"""Embedding perturbation for custom training loops (TensorFlow).

The attack/restore pattern of the PyTorch recipes, as a context manager:
inside the `with` block the embedding rows that the gradient touches hold
`E + r`; on leaving it, also through an exception, they hold `E` again, bit
for bit (restored from a copy of the touched rows, never by subtracting `r`).
"""

import contextlib

from keras_adv import _stacks
from keras_adv.embedding import find_embedding
from keras_adv.methods import FGM

__all__ = ["perturbed_embedding"]


def _tf_variable(variable):
    import tensorflow as tf

    # A Keras 3 variable wraps the tf.Variable that scatter ops need.
    return variable if isinstance(variable, tf.Variable) else variable.value


@contextlib.contextmanager
def perturbed_embedding(model, embedding_name, gradient, epsilon=1.0, *, method=None):
    """Perturbs an embedding matrix inside a `with` block, then restores it.

    Adds `r = epsilon * g / ||g||_2` (or `method.ascend(None, g)`) to the
    rows of the embedding that `gradient` touches. Use it between the clean
    backward pass and the adversarial one of a custom `tf.GradientTape` loop.

    Args:
        model: A Keras 3 (TensorFlow backend) or tf-keras model.
        embedding_name: Embedding layer name or variable path, as in
            `adversarial_training`.
        gradient: The gradient of the clean loss w.r.t. that embedding matrix,
            as returned by `tape.gradient` (`tf.IndexedSlices` or dense).
        epsilon: Positive float, the L2 norm of the perturbation.
        method: Optional `keras_adv.FGM`/`keras_adv.PGD` to build the step
            instead (its `ascend(None, g)`); overrides `epsilon`.

    Yields:
        The perturbation rows that were added.

    Example:

    ```python
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    embedding_grad = grads[index_of_embedding]
    with keras_adv.perturbed_embedding(model, "embedding", embedding_grad, 0.5):
        with tf.GradientTape() as tape:
            adversarial_loss = loss_fn(y, model(x, training=True))
        adversarial_grads = tape.gradient(adversarial_loss, model.trainable_variables)
    optimizer.apply_gradients(zip(
        [g + a for g, a in zip(grads, adversarial_grads)], model.trainable_variables))
    ```
    """
    # TensorFlow is imported here, not with keras_adv: bert4keras users must
    # set their environment flags (prepare_bert4keras) before it loads.
    from keras_adv._stacks.tf_rows import RowsInPlace, TouchedRows

    adversary = method if method is not None else FGM(epsilon=epsilon)
    variable = _tf_variable(find_embedding(model, embedding_name))
    if gradient is None:
        raise ValueError(
            f"`gradient` is None: the loss does not depend on embedding "
            f"'{embedding_name}'."
        )
    touched = TouchedRows(gradient)
    perturbation = adversary.ascend(None, touched.rows(gradient))
    # tf-keras gathers rows sparsely. Keras 3 reads the whole matrix, and
    # keeping those reads copy-free after row writes takes an op that XLA
    # lacks (see RowsInPlace); this block may run inside an XLA function, so
    # on Keras 3 it writes the whole perturbed matrix.
    rows = RowsInPlace(variable, touched, sparse_writes=_stacks.family(model) == "tf_keras")
    rows.move(perturbation)
    try:
        yield perturbation
    finally:
        rows.restore()
