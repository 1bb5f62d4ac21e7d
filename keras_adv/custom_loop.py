"""Embedding perturbation for custom training loops (TensorFlow).

The attack pattern of the PyTorch recipes, as a context manager: inside the
`with` block the embedding layer's lookups return `E[ids] + r[ids]`, which
equals looking up `E + r`. The matrix itself is never written, so on leaving
the block, also through an exception, it is exactly as before.
"""

import contextlib

from keras_adv.embedding import find_embedding_layer
from keras_adv.methods import FGM

__all__ = ["perturbed_embedding"]


@contextlib.contextmanager
def perturbed_embedding(model, embedding_name, gradient, epsilon=1.0, *, method=None):
    """Perturbs the lookups of an embedding inside a `with` block.

    Adds `r = epsilon * g / ||g||_2` (or `method.ascend(None, g)`) to the
    rows of the embedding that `gradient` touches, as the model's lookups see
    them; a model that also reads the matrix elsewhere (a tied output
    projection) sees it unperturbed there. Use it between the clean backward
    pass and the adversarial one of a custom `tf.GradientTape` loop.

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
        The perturbation rows, one per token occurrence of the gradient
        (duplicates share one row; see `tf_rows.TouchedRows`).

    Raises:
        ValueError: If `gradient` is None.

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
    import tensorflow as tf

    from keras_adv._stacks.lookup import Lookups, tapped_lookups
    from keras_adv._stacks.tf_rows import TouchedRows

    adversary = method if method is not None else FGM(epsilon=epsilon)
    layer = find_embedding_layer(model, embedding_name)
    if gradient is None:
        raise ValueError(
            f"`gradient` is None: the loss does not depend on embedding "
            f"'{embedding_name}'."
        )
    if isinstance(gradient, tf.IndexedSlices):
        ids, values = gradient.indices, gradient.values
    else:  # A dense gradient: every row of the matrix.
        values = tf.convert_to_tensor(gradient)
        ids = tf.range(tf.shape(values)[0])
    gradient_rows = Lookups()
    gradient_rows.ids.append(ids)
    touched = TouchedRows(gradient_rows, layer)
    perturbation = adversary.ascend(None, touched.rows([ids], [values]))

    def add_perturbation(index, ids, outputs):
        return outputs + tf.cast(touched.at(index, ids, perturbation), outputs.dtype)

    with tapped_lookups(layer, add_perturbation):
        yield perturbation
