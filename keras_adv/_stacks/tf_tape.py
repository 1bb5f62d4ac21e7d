"""One pass of the model on a `tf.GradientTape`, with its lookups tapped.

Keras 3 on TensorFlow and tf-keras in eager mode run their passes this way;
only how each computes its loss differs (`forward`).
"""

import tensorflow as tf

from keras_adv._stacks.lookup import tapped_lookups
from keras_adv._stacks.passes import Pass

__all__ = ["taped_pass", "no_lookup_gradient_error"]


def taped_pass(layer, forward, sources, perturbation_at=None, lookup_gradients=True):
    """Runs `forward()` with the lookups of `layer` perturbed and watched.

    Args:
        layer: The embedding layer.
        forward: `() -> (loss to differentiate, loss to report)`, run inside
            the tape.
        sources: The weights whose gradients the pass needs (maybe none:
            then the tape records only what depends on the lookups).
        perturbation_at: `ids -> perturbation` added to each lookup's output,
            or None for the clean pass.
        lookup_gradients: Whether to differentiate the lookups' outputs.

    Returns:
        A `Pass`, with the reported loss.
    """
    with tf.GradientTape(watch_accessed_variables=bool(sources)) as tape:

        def transform(ids, outputs):
            if perturbation_at is not None:
                outputs = outputs + tf.cast(perturbation_at(ids), outputs.dtype)
            tape.watch(outputs)
            return outputs

        with tapped_lookups(layer, transform) as lookups:
            loss, reported = forward()
    if not lookups.outputs:
        raise ValueError(
            f"The model never looked up token ids through layer '{layer.name}'. "
            f"Name the embedding layer that the model's inputs go through."
        )
    targets = list(sources) + (lookups.outputs if lookup_gradients else [])
    grads = tape.gradient(loss, targets)
    lookup_grads = grads[len(sources):] if lookup_gradients else None
    if lookup_gradients and all(g is None for g in lookup_grads):
        raise no_lookup_gradient_error(layer)
    if lookup_grads is not None:
        lookup_grads = [
            tf.zeros_like(o) if g is None else tf.convert_to_tensor(g)
            for o, g in zip(lookups.outputs, lookup_grads)
        ]
    return Pass(reported, grads[: len(sources)], lookups, lookup_grads)


def no_lookup_gradient_error(layer):
    return ValueError(
        f"The loss does not depend on the lookups of embedding layer "
        f"'{layer.name}', so they cannot be perturbed. Name the embedding layer "
        f"that the model's inputs go through."
    )
