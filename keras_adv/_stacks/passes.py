"""The order of passes in an adversarial step, shared by every stack.

A stack supplies one function, `perturbed_pass(perturbation, last)`, that runs
the model with the embedding rows moved by `perturbation` and returns
`(loss, weight_gradients, embedding_gradient)`; weight gradients are asked for
on the last pass only (earlier PGD passes need the embedding gradient alone).
"""

__all__ = ["AdversarialStep", "attack", "split_gradients", "update_gradients"]


class AdversarialStep:
    """What every stack's step holds: the embedding, the method, the objective.

    Each stack subclasses it with `__call__(model, ...)` for its own step
    contract, and is bound to one model with `types.MethodType`.

    Args:
        embedding: The embedding matrix variable.
        method: A `keras_adv.FGM` or `keras_adv.PGD`.
        objective: `"sum"` or `"adversarial"`.
    """

    # Autograph (tf-keras with jit_compile) reads the name of what it converts.
    __name__ = "train_step"

    def __init__(self, embedding, method, objective):
        self.embedding = embedding
        self.method = method
        self.objective = objective


def split_gradients(tape, loss, sources, embedding, embedding_target):
    """Gradients of `sources` and of the embedding, from one tape.

    The embedding is differentiated through `embedding_target` (the tensor or
    variable the pass actually read), whether or not it is among `sources`.

    Returns:
        (gradients of `sources`, gradient of the embedding).
    """
    position = next((i for i, v in enumerate(sources) if v is embedding), None)
    targets = [embedding_target if v is embedding else v for v in sources]
    if position is None:
        targets.append(embedding_target)
        position = len(targets) - 1
    grads = tape.gradient(loss, targets)
    return grads[: len(sources)], grads[position]


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
