"""Putting a step on one model instance, and taking it off again.

The step is a callable object bound with `types.MethodType`, so the model keeps
its class, `fit` finds the instance attribute, and nothing is tracked or saved.
"""

import types

__all__ = ["installed_step", "install_step", "uninstall_step"]


def installed_step(model, attribute, step_class):
    """The `step_class` instance bound as `model.<attribute>`, or None."""
    bound = model.__dict__.get(attribute)
    if isinstance(bound, types.MethodType) and isinstance(bound.__func__, step_class):
        return bound.__func__
    return None


def install_step(model, attribute, step, stock_method):
    """Binds `step` as `model.<attribute>`, replacing an earlier keras_adv
    step; a `TypeError` where the model's class overrides `stock_method`
    (its own logic would be silently replaced)."""
    if (
        installed_step(model, attribute, type(step)) is None
        and getattr(type(model), attribute) is not stock_method
    ):
        raise TypeError(
            f"{type(model).__name__} overrides `{attribute}`, which "
            f"`adversarial_training` would replace. Perturb the embedding inside "
            f"your own step with `keras_adv.perturbed_embedding` instead."
        )
    setattr(model, attribute, types.MethodType(step, model))
    # `fit` caches the train function; the next `fit` must build it again.
    model.train_function = None


def uninstall_step(model, attribute):
    delattr(model, attribute)
    model.train_function = None
