"""Embedding perturbation for custom training loops (TensorFlow and PyTorch).

The attack pattern of the PyTorch recipes, as a context manager: inside the
`with` block the embedding layer's lookups return `E[ids] + r[ids]`, which
equals looking up `E + r`. The matrix itself is never written, so on leaving
the block, also through an exception, it is exactly as before.

On TensorFlow (Keras 3 and tf-keras) the gradient may be sparse
(`tf.IndexedSlices`, as a tape returns it) and only its rows are formed; on
PyTorch it is the dense `embeddings.value.grad`. JAX has no such block: its
gradients come from pure functions, which read the matrix from their
arguments, so a JAX loop adds `r` to the matrix it passes in
(`model.stateless_call`), and `adversarial_training` serves `fit`.
"""

import contextlib

from keras_adv import _stacks
from keras_adv.embedding import find_embedding_layer
from keras_adv.methods import FGM

__all__ = ["perturbed_embedding", "add_gradients"]

NO_JAX_BLOCK = (
    "`perturbed_embedding` perturbs the lookups of a model that runs inside the block; "
    "JAX differentiates pure functions instead, which read the embedding matrix from "
    "their arguments (a function traced before the block would not see it). On JAX, "
    "train with `keras_adv.adversarial_training(model, ...)` and `fit`, or, in your own "
    "loop, add the perturbation to the matrix you pass to `model.stateless_call` "
    "(r = keras_adv.FGM(epsilon).ascend(None, gradient_of_the_matrix)): the variable is "
    "never written either way."
)


@contextlib.contextmanager
def perturbed_embedding(model, embedding_name, gradient, epsilon=1.0, *, method=None):
    """Perturbs the lookups of an embedding inside a `with` block.

    Adds `r = epsilon * g / ||g||_2` (or `method.ascend(None, g)`) to the
    rows of the embedding that `gradient` touches, as the model's lookups see
    them; a model that also reads the matrix elsewhere (a tied output
    projection) sees it unperturbed there. Use it between the clean backward
    pass and the adversarial one of a custom `tf.GradientTape` loop.

    Args:
        model: A Keras 3 model (TensorFlow or PyTorch backend) or a
            tf-keras model.
        embedding_name: Embedding layer name or variable path, as in
            `adversarial_training`.
        gradient: The gradient of the clean loss w.r.t. that embedding matrix:
            on TensorFlow as `tape.gradient` returns it (`tf.IndexedSlices`
            or dense), on PyTorch the matrix's `.value.grad` after
            `loss.backward()`.
        epsilon: Positive float, the L2 norm of the perturbation.
        method: Optional `keras_adv.FGM`/`keras_adv.PGD` to build the step
            instead (its `ascend(None, g)`); overrides `epsilon`.

    Yields:
        The perturbation: on TensorFlow its rows, one per token occurrence of
        the gradient (duplicates share one row; see `rows.TouchedRows`);
        on PyTorch the dense `r` of the gradient's shape.

    Raises:
        ValueError: If `gradient` is None.
        NotImplementedError: On JAX, whose loops differentiate pure
            functions (the error says what works there).

    Example:

    ```python
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    embedding_grad = grads[0]  # The embedding is the model's first weight here.
    with keras_adv.perturbed_embedding(model, "embedding", embedding_grad, 0.5):
        with tf.GradientTape() as tape:
            adversarial_loss = loss_fn(y, model(x, training=True))
        adversarial_grads = tape.gradient(adversarial_loss, model.trainable_variables)
    optimizer.apply_gradients(
        zip(keras_adv.add_gradients(grads, adversarial_grads), model.trainable_variables))
    ```
    """
    from keras_adv._stacks.lookup import tapped_lookups

    backend = _backend_of(model)
    if backend == "jax":
        raise NotImplementedError(NO_JAX_BLOCK)
    adversary = method if method is not None else FGM(epsilon=epsilon)
    layer = find_embedding_layer(model, embedding_name)
    if gradient is None:
        raise ValueError(
            f"`gradient` is None: the loss does not depend on embedding "
            f"'{embedding_name}'."
        )
    if backend == "torch":
        perturbation, add_perturbation = _dense_perturbation(adversary, gradient)
    else:
        perturbation, add_perturbation = _touched_rows_perturbation(adversary, gradient, layer)
    with tapped_lookups(layer, add_perturbation):
        yield perturbation


def add_gradients(gradients, adversarial_gradients):
    """Adds two lists of gradients, entry by entry, as a custom loop's
    `objective="sum"` update needs: `tf.IndexedSlices` (an embedding's
    gradient on TensorFlow) stay sparse, where `+` would fail; `None` (a
    weight the loss does not reach) counts as zero.

    Args:
        gradients: The clean pass's gradients (a list).
        adversarial_gradients: The perturbed pass's, in the same order.

    Returns:
        A list of the sums.
    """
    return [_add(a, b) for a, b in zip(gradients, adversarial_gradients, strict=True)]


def _add(a, b):
    if a is None or b is None:
        return b if a is None else a
    if type(a).__module__.startswith("tensorflow") or type(b).__module__.startswith("tensorflow"):
        from keras_adv._stacks.tf_rows import add_gradients as add_tensorflow_gradients

        return add_tensorflow_gradients(a, b)
    return a + b


def _backend_of(model):
    if _stacks.family(model) == "keras3":
        import keras

        return keras.backend.backend()
    return "tensorflow"  # tf-keras (or not a model: `find_embedding_layer` says so).


def _dense_perturbation(adversary, gradient):
    """PyTorch: `r` from the dense gradient of the matrix (its untouched rows
    are 0, so its norm is the touched rows'); each lookup adds `r[ids]`."""
    from keras import ops

    perturbation = adversary.ascend(None, ops.cast(gradient, "float32"))

    def add_perturbation(index, ids, outputs):
        return outputs + ops.cast(ops.take(perturbation, ids, axis=0), outputs.dtype)

    return perturbation, add_perturbation


def _touched_rows_perturbation(adversary, gradient, layer):
    """TensorFlow: `r` of the rows that the (sparse or dense) gradient touches."""
    # TensorFlow is imported here, not with keras_adv: bert4keras users must
    # set their environment flags (prepare_bert4keras) before it loads.
    import tensorflow as tf

    from keras_adv._stacks.lookup import Lookups
    from keras_adv._stacks.tf_rows import perturbation_space

    if isinstance(gradient, tf.IndexedSlices):
        ids, values = gradient.indices, gradient.values
    else:  # A dense gradient: every row of the matrix.
        values = tf.convert_to_tensor(gradient)
        ids = tf.range(tf.shape(values)[0])
    gradient_rows = Lookups()
    gradient_rows.ids.append(ids)
    touched = perturbation_space(False, gradient_rows, layer)
    perturbation = adversary.ascend(None, touched.rows([ids], [values]))

    def add_perturbation(index, ids, outputs):
        return outputs + tf.cast(touched.at(index, ids, perturbation), outputs.dtype)

    return perturbation, add_perturbation
