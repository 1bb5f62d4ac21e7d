"""Scores for the ablation table: precision / recall / macro-F1, and accuracy
under an embedding-space FGM attack."""

import numpy as np

__all__ = ["confusion_matrix", "macro_scores", "attacked_accuracy"]


def confusion_matrix(labels, predictions, num_classes):
    """`matrix[true, predicted]` counts."""
    matrix = np.zeros((num_classes, num_classes), dtype="int64")
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def macro_scores(matrix):
    """Macro-averaged (precision, recall, F1) from a confusion matrix.

    A class never predicted has precision 0, a class never present recall 0
    (and F1 0), as in scikit-learn with `zero_division=0`.
    """
    matrix = np.asarray(matrix, dtype="float64")
    true_positives = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positives), where=denominator > 0)
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


def attacked_accuracy(model, embedding_name, x, y, epsilon, *, batch_size=256):
    """Accuracy when each batch's embedding matrix is moved by `epsilon * g / ||g||`.

    The white-box attack of the training recipe: `g` is the gradient of the
    loss on the batch's true labels w.r.t. the embedding matrix. It uses
    `keras_adv.perturbed_embedding`, so the matrix is restored exactly after
    each batch.

    Args:
        model: A Keras 3 (TensorFlow backend) classifier returning logits.
        embedding_name: Its embedding layer or variable.
        x, y: Inputs (int array) and integer labels.
        epsilon: The attack's L2 norm; 0 gives the clean accuracy.
        batch_size: Batch size of the attack.
    """
    import tensorflow as tf

    from keras_adv import find_embedding, perturbed_embedding

    embedding = find_embedding(model, embedding_name)

    # One trace for every batch size (the last batch is smaller).
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, *np.shape(x)[1:]], tf.as_dtype(np.asarray(x).dtype)),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def predict(xb, yb):
        if epsilon == 0:
            return tf.argmax(model(xb, training=False), axis=-1, output_type=tf.int32)
        with tf.GradientTape() as tape:
            tape.watch(embedding.value)
            logits = model(xb, training=False)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
            )
        gradient = tape.gradient(loss, embedding.value)
        with perturbed_embedding(model, embedding_name, gradient, epsilon):
            return tf.argmax(model(xb, training=False), axis=-1, output_type=tf.int32)

    correct = 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], np.asarray(y[start : start + batch_size], "int32")
        correct += int(np.sum(predict(tf.constant(xb), tf.constant(yb)).numpy() == yb))
    return correct / len(y)
