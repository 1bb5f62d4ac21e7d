"""Which models are measured, and building them: random weights, no download.

A small BERT classifier (two classes), built for one stack: KerasHub's
`BertBackbone` on Keras 3, bert4keras's `build_transformer_model` on
tf-keras, the sizes the same on both. And, on Keras 3 only, a Gemma-like
causal LM with Gemma's 256,000-token vocabulary and LoRA on (the embedding
frozen, as large models are fine-tuned), few and small layers so that it
runs on two CPU cores.
"""

import os

from benchmarks.step_cost import ROOT

GEMMA_LIKE = "gemma-like, vocab 256000, LoRA"
BERT_WITH_DROPOUT = "bert-like, dropout 0.1"
BERT_LIKE = dict(vocab=21128, layers=4, width=256, heads=4, length=128, batch=16)
MODELS = {
    "tiny": dict(vocab=2000, layers=1, width=64, heads=2, length=32, batch=16),
    "bert-like": BERT_LIKE,
    "bert-like, vocab 250000": dict(BERT_LIKE, vocab=250000),
    # Adam updates the whole embedding matrix, so the plain step itself grows
    # with the vocabulary; with the embedding frozen nothing in a plain step
    # does, and the ratio shows whether keras_adv's own cost grows.
    "bert-like, frozen embedding": dict(BERT_LIKE, frozen_embedding=True),
    "bert-like, frozen embedding, vocab 250000": dict(BERT_LIKE, vocab=250000, frozen_embedding=True),
    # R-Drop's two passes differ only by their dropout masks (without dropout
    # its step raises): it runs here, with BERT's fine-tuning dropout.
    BERT_WITH_DROPOUT: dict(BERT_LIKE, dropout=0.1),
    # Keras 3 only. Tied embeddings: the logits are [batch, length, 256000].
    GEMMA_LIKE: dict(vocab=256000, layers=2, width=64, heads=2, length=32, batch=4, lora_rank=4, causal_lm=True),
}
# Models timed side by side, round by round: the two vocabulary sizes that are
# compared see the same machine state (timed one after the other, the plain
# step moved by up to 10% between them, more than what is being measured).
TIMED_TOGETHER = [
    ["tiny"],
    ["bert-like", "bert-like, vocab 250000"],
    ["bert-like, frozen embedding", "bert-like, frozen embedding, vocab 250000"],
    [BERT_WITH_DROPOUT],
    [GEMMA_LIKE],
]
# What runs under MirroredStrategy, beside the same on one device.
MIRRORED_MODELS = ["tiny", "bert-like"]


def runs_on(stack, model_name):
    """Whether model `model_name` is measured on `stack` (the causal LM on Keras 3 only)."""
    return stack == "keras3" or not MODELS[model_name].get("causal_lm")


def build(stack, spec, jit):
    """Builds and compiles one model of `MODELS` on `stack`.

    Args:
        stack: `"keras3"` (KerasHub) or `"tf_keras"` (bert4keras).
        spec: the model's sizes, a value of `MODELS`.
        jit: the model's `jit_compile`; the adversarial step picks its XLA
            path from it.

    Returns:
        `(model, embedding_name, (x, labels))`: the compiled model, the name of
        its token embedding layer, and one batch of random tokens and labels.
    """
    import numpy as np

    rng = np.random.RandomState(0)
    tokens = rng.randint(1, spec["vocab"], size=(spec["batch"], spec["length"]))
    labels = rng.randint(0, 2, size=spec["batch"]).astype("int32")
    if spec.get("causal_lm"):
        return _causal_lm(stack, spec, jit, rng)
    if stack == "keras3":
        import keras
        import keras_hub

        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=spec["vocab"], num_layers=spec["layers"], num_heads=spec["heads"],
            hidden_dim=spec["width"], intermediate_dim=4 * spec["width"],
            max_sequence_length=spec["length"], dropout=spec.get("dropout", 0.0),
        )
        model = keras_hub.models.BertTextClassifier(
            backbone, num_classes=2, preprocessor=None, dropout=spec.get("dropout", 0.0)
        )
        x = {"token_ids": tokens.astype("int32"), "segment_ids": np.zeros_like(tokens, "int32"),
             "padding_mask": np.ones_like(tokens, "int32")}
        embedding_name = "token_embedding"
    else:
        from bert4keras.backend import keras
        from bert4keras.models import build_transformer_model

        bert = build_transformer_model(
            os.path.join(ROOT, "examples", "tiny_bert_config.json"), checkpoint_path=None,
            vocab_size=spec["vocab"], hidden_size=spec["width"], num_hidden_layers=spec["layers"],
            num_attention_heads=spec["heads"], intermediate_size=4 * spec["width"],
            max_position_embeddings=spec["length"], dropout_rate=spec.get("dropout", 0.0),
        )
        cls = keras.layers.Lambda(lambda h: h[:, 0])(bert.output)
        model = keras.models.Model(bert.input, keras.layers.Dense(2)(cls))
        x = [tokens.astype("float32"), np.zeros(tokens.shape, "float32")]
        embedding_name = "Embedding-Token"
    if spec.get("frozen_embedding"):
        embedding_layer = backbone.token_embedding if stack == "keras3" else model.get_layer(embedding_name)
        embedding_layer.trainable = False
    model.compile(
        optimizer=keras.optimizers.Adam(1e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # The adversarial step picks its XLA path from the model's setting.
        jit_compile=jit,
    )
    return model, embedding_name, (x, labels)


def _causal_lm(stack, spec, jit, rng):
    """`build` for the Gemma-like causal LM: LoRA on its query and value
    projections, trained on the next tokens (`(x, labels)` of `[batch,
    length]`)."""
    import keras
    import keras_hub
    import numpy as np

    assert stack == "keras3", stack
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=spec["vocab"], num_layers=spec["layers"], num_query_heads=spec["heads"],
        num_key_value_heads=1, hidden_dim=spec["width"], intermediate_dim=4 * spec["width"],
        head_dim=spec["width"] // spec["heads"], dropout=0.0,
    )
    backbone.enable_lora(spec["lora_rank"])
    model = keras_hub.models.GemmaCausalLM(backbone, preprocessor=None)
    tokens = rng.randint(1, spec["vocab"], size=(spec["batch"], spec["length"] + 1)).astype("int32")
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((spec["batch"], spec["length"]), "int32")}
    model.compile(
        optimizer=keras.optimizers.Adam(1e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model, "token_embedding", (x, tokens[:, 1:])
