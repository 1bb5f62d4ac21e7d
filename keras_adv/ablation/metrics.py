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


def attacked_accuracy(model, embedding_name, x, y, epsilons, *, batch_size=256):
    """Test accuracy when each batch's embedding lookups read `E + eps * g / ||g||`.

    The white-box attack of the training recipe: `g` is the gradient of the
    loss on the batch's true labels w.r.t. the embedding matrix, computed once
    per batch for every epsilon. It uses `keras_adv.perturbed_embedding`, so
    the matrix itself is never written. Works for Keras 3
    (TensorFlow) and tf-keras classifiers that return logits, with array,
    list or dict inputs.

    Args:
        model: The classifier.
        embedding_name: Its embedding layer or variable.
        x, y: Inputs and integer labels.
        epsilons: Attack L2 norms; 0 gives the clean accuracy.
        batch_size: Batch size of the attack.

    Returns:
        A dict `{epsilon: accuracy}`.
    """
    import tensorflow as tf

    from keras_adv import find_embedding, perturbed_embedding

    epsilons = [float(e) for e in epsilons]
    embedding = find_embedding(model, embedding_name)
    if not isinstance(embedding, tf.Variable):
        embedding = embedding.value  # A Keras 3 variable wraps the tf.Variable.
    spec = tf.nest.map_structure(
        lambda a: tf.TensorSpec([None, *np.shape(a)[1:]], tf.as_dtype(np.asarray(a).dtype)), x
    )

    def predict(inputs):
        return tf.argmax(model(inputs, training=False), axis=-1, output_type=tf.int32)

    # One trace for every batch size (the last batch is smaller).
    @tf.function(input_signature=[spec, tf.TensorSpec([None], tf.int32)])
    def correct_per_epsilon(xb, yb):
        with tf.GradientTape() as tape:
            tape.watch(embedding)
            logits = model(xb, training=False)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
            )
        gradient = tape.gradient(loss, embedding)
        counts = []
        for epsilon in epsilons:
            if epsilon == 0:
                predictions = predict(xb)
            else:
                with perturbed_embedding(model, embedding_name, gradient, epsilon):
                    predictions = predict(xb)
            counts.append(tf.reduce_sum(tf.cast(tf.equal(predictions, yb), tf.int32)))
        return tf.stack(counts)

    labels = np.asarray(y, "int32")
    correct = np.zeros(len(epsilons), dtype="int64")
    for start in range(0, len(labels), batch_size):
        xb = tf.nest.map_structure(lambda a: tf.constant(a[start : start + batch_size]), x)
        correct += correct_per_epsilon(xb, tf.constant(labels[start : start + batch_size])).numpy()
    return {epsilon: float(c) / len(labels) for epsilon, c in zip(epsilons, correct)}
