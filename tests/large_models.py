"""A tiny random KerasHub causal LM (Gemma, no download) and an independent
route to its adversarial step, for tests/keras3/test_large_models.py.

The route never goes through keras_adv's lookup tap: it cuts the backbone
at its token embedding with a functional sub-model (`trunk`: the lookup's
output and the padding mask in, the hidden states out, sharing the
backbone's variables), runs it in a `keras.StatelessScope` on given weight
values, and differentiates it with the backend's own autodiff
(`value_and_gradients`). Adding a perturbation to the trunk's input is what
keras_adv does at the lookups.
"""

import keras
import keras_hub
import numpy as np

VOCAB, HIDDEN, LENGTH, BATCH = 64, 16, 8, 4


def gemma(lora_rank=None, **sizes):
    """A one-layer random `GemmaCausalLM` (tied embeddings), no dropout,
    with LoRA on its default target layers (query, value) if `lora_rank`;
    `sizes` replace the backbone's arguments (`vocabulary_size=96`)."""
    backbone = keras_hub.models.GemmaBackbone(**{
        **dict(vocabulary_size=VOCAB, num_layers=1, num_query_heads=2, num_key_value_heads=1,
               hidden_dim=HIDDEN, intermediate_dim=32, head_dim=8, dropout=0.0),
        **sizes,
    })
    if lora_rank:
        backbone.enable_lora(lora_rank)
    return keras_hub.models.GemmaCausalLM(backbone, preprocessor=None)


def compile_sgd(model, lr, **kwargs):
    model.compile(
        optimizer=keras.optimizers.SGD(lr, **kwargs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    return model


def causal_batch(seed=0, padding_weight=0.0):
    """`(x, y, sample_weight)`: dict inputs {token_ids, padding_mask}, the
    next tokens as labels, and a per-token weight. Example i ends in i
    padding positions (token 0); each real position weighs between 0.5 and
    1.5, each padding position `padding_weight` (0: padding never reaches
    the loss)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, VOCAB, size=(BATCH, LENGTH + 1)).astype("int32")
    mask = np.ones((BATCH, LENGTH + 1), "int32")
    for i in range(BATCH):
        if i:
            mask[i, -i:] = 0
    ids = ids * mask
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    weight = np.where(mask[:, 1:] == 1, rng.uniform(0.5, 1.5, size=(BATCH, LENGTH)), padding_weight)
    return x, ids[:, 1:], weight.astype("float32")


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def value_and_gradients(function, arguments):
    """`(function(*arguments), [d function / d argument])` by the backend's
    autodiff (`arguments`: numpy arrays). On JAX, `function` is compiled
    once (`jax.jit`, cached on it): eager JAX compiles each op on its own,
    which is many times slower here."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        compiled = getattr(function, "_compiled", None)
        if compiled is None:
            compiled = jax.jit(jax.value_and_grad(function, argnums=tuple(range(len(arguments)))))
            function._compiled = compiled
        value, grads = compiled(*arguments)
        return to_numpy(value), [to_numpy(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        args = [tf.convert_to_tensor(a) for a in arguments]
        with tf.GradientTape() as tape:
            tape.watch(args)
            value = function(*args)
        grads = tape.gradient(value, args)
        return to_numpy(value), [np.zeros_like(a) if g is None else to_numpy(tf.convert_to_tensor(g))
                                 for a, g in zip(arguments, grads)]
    import torch

    args = [keras.ops.convert_to_tensor(a).detach().requires_grad_() for a in arguments]
    value = function(*args)
    grads = torch.autograd.grad(value, args, allow_unused=True)
    return to_numpy(value.detach()), [np.zeros_like(a) if g is None else to_numpy(g)
                                      for a, g in zip(arguments, grads)]


class Route:
    """The causal LM's loss as a function of its trainable weights' values
    and of what is added to the token embedding's lookups, through public
    Keras APIs only.

    Args:
        model: A built `GemmaCausalLM` (`gemma()`).
        x, y, sample_weight: A batch (`causal_batch()`).
    """

    def __init__(self, model, x, y, sample_weight):
        backbone = model.backbone
        self.embedding = backbone.token_embedding
        self.trunk = keras.Model(
            [self.embedding.output, backbone.input["padding_mask"]], backbone.output
        )
        self.variables = list(model.trainable_variables)
        self.frozen = list(model.non_trainable_variables)
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        # A function of its own (compiled once on JAX): the weights' values, then what is added.
        self._loss_of_arguments = lambda *arguments: self.loss_of(list(arguments[:-1]), arguments[-1])

    def values(self):
        return [to_numpy(v) for v in self.variables]

    def logits(self, values, added=None):
        """The logits with weights `values`, `added` (or nothing) added at the lookups."""
        mapping = list(zip(self.variables, values)) + [(v, v.value) for v in self.frozen]
        with keras.StatelessScope(state_mapping=mapping):
            embedded = self.embedding(keras.ops.convert_to_tensor(self.x["token_ids"]))
            if added is not None:
                embedded = embedded + keras.ops.cast(added, embedded.dtype)
            mask = keras.ops.convert_to_tensor(self.x["padding_mask"])
            hidden = self.trunk([embedded, mask], training=True)
            return self.embedding(hidden, reverse=True)

    def loss_of(self, values, added=None):
        return self.loss(self.y, self.logits(values, added), sample_weight=self.sample_weight)

    def gradients(self, values, added=None):
        """`(loss, gradients of the trainable weights, gradient w.r.t. the
        lookups' outputs [B, T, d])` at weights `values`, `added` (or
        nothing) added at the lookups."""
        if added is None:
            added = np.zeros(self.x["token_ids"].shape + (self.embedding.output_dim,), "float32")
        loss, grads = value_and_gradients(self._loss_of_arguments, list(values) + [added])
        return loss, grads[:-1], grads[-1]


def per_example_fgm(gradient, padding_mask, epsilon):
    """`r_i = epsilon * g_i / ||g_i||`, each example's norm over its
    non-padding positions (`padding_mask` None: over every position), and
    padding left unperturbed."""
    mask = np.ones(gradient.shape[:2]) if padding_mask is None else padding_mask
    masked = gradient.astype("float64") * mask[..., None]
    norms = np.sqrt((masked ** 2).sum(axis=(1, 2), keepdims=True))
    return (epsilon * masked / np.where(norms > 0, norms, 1.0)).astype("float32")
