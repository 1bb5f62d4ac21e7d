"""The order of passes in an adversarial step, shared by every stack.

1. The clean pass: the loss, and the gradient w.r.t. the lookups' outputs
   (plus the weight gradients when the update uses the clean loss).
2. `method.steps` perturbed passes, each built from the gradient of the pass
   before; the weight gradients are asked for on the last pass only.
3. One optimizer update from clean + adversarial, or adversarial only.

A stack supplies `perturbed_pass(perturbation, last) -> Pass`: the model run
with `perturbation` (rows of the touched tokens) added at its lookups.
"""

import collections

__all__ = ["AdversarialStep", "Pass", "attack", "update_gradients"]

Pass = collections.namedtuple("Pass", ["loss", "gradients", "lookups", "lookup_gradients"])
Pass.__doc__ = """What one pass computed.

Attributes:
    loss: The loss of the pass.
    gradients: The gradients of the weights it was asked for (maybe none).
    lookups: Its `Lookups` (ids and outputs).
    lookup_gradients: The gradient w.r.t. each lookup's output, or None
        where the pass did not need them (the last one).
"""


class AdversarialStep:
    """What every stack's step holds: the embedding layer, the method, the objective.

    Each stack subclasses it with `__call__(model, ...)` for its own step
    contract, and is bound to one model with `types.MethodType`.

    Args:
        layer: The embedding layer whose lookups are perturbed.
        method: A `keras_adv.FGM` or `keras_adv.PGD`.
        objective: `"sum"` or `"adversarial"`.
    """

    # Autograph (tf-keras with jit_compile) reads the name of what it converts.
    __name__ = "train_step"

    def __init__(self, layer, method, objective):
        self.layer = layer
        self.method = method
        self.objective = objective

    @property
    def dim(self):
        return self.layer.embeddings.shape[1]


def attack(method, touched, clean, perturbed_pass):
    """Runs `method.steps` perturbed passes; returns the last one's `Pass`.

    Args:
        method: A `keras_adv.FGM` or `keras_adv.PGD`.
        touched: The `TouchedRows` of the batch.
        clean: The clean `Pass`.
        perturbed_pass: `(perturbation, last) -> Pass`.
    """
    perturbation, latest = None, clean
    for step in range(method.steps):
        gradient = touched.rows(latest.lookups.ids, latest.lookup_gradients)
        perturbation = method.ascend(perturbation, gradient)
        latest = perturbed_pass(perturbation, step == method.steps - 1)
    return latest


def update_gradients(objective, clean_grads, adversarial_grads, add):
    """The gradients the optimizer applies: clean + adversarial, or adversarial only."""
    if objective == "adversarial":
        return list(adversarial_grads)
    return [add(c, a) for c, a in zip(clean_grads, adversarial_grads)]
