"""The order of passes in an adversarial step, shared by every stack.

A stack supplies one function, `perturbed_pass(perturbation, last)`, that runs
the model with the embedding rows moved by `perturbation` and returns
`(loss, weight_gradients, embedding_gradient)`; weight gradients are asked for
on the last pass only (earlier PGD passes need the embedding gradient alone).
"""

__all__ = ["attack", "update_gradients"]


def attack(method, touched, clean_embedding_gradient, perturbed_pass):
    """Runs `method.steps` perturbed passes; returns the last pass's (loss, gradients).

    Args:
        method: A `keras_adv.FGM` or `keras_adv.PGD`.
        touched: The `TouchedRows` of the batch.
        clean_embedding_gradient: The embedding gradient of the clean pass.
        perturbed_pass: `(perturbation, last) -> (loss, grads, embedding_grad)`.
    """
    perturbation, gradient = None, clean_embedding_gradient
    for step in range(method.steps):
        perturbation = method.ascend(perturbation, touched.rows(gradient))
        loss, grads, gradient = perturbed_pass(perturbation, step == method.steps - 1)
    return loss, grads


def update_gradients(objective, clean_grads, adversarial_grads, add):
    """The gradients the optimizer applies: clean + adversarial, or adversarial only."""
    if objective == "adversarial":
        return list(adversarial_grads)
    return [add(c, a) for c, a in zip(clean_grads, adversarial_grads)]
