"""Which `tf.distribute` strategies an adversarial step can honour.

Under a strategy, the step builds the perturbation from the gradient of the
global batch (`rows.TouchedRows`, `tf_rows.py`), so every replica applies the same one
and training gives the single-device result. That takes a strategy that runs
the step on every replica at once, with `all_gather` and `all_reduce` in its
replica context. Any other strategy is refused rather than run as something
else.
"""

__all__ = ["check_strategy"]

# By class name: tf.distribute.MultiWorkerMirroredStrategy's class is
# CollectiveAllReduceStrategy, and the default strategy's class is private.
_ONE_WORKER = {"_DefaultDistributionStrategy", "OneDeviceStrategy", "MirroredStrategy"}
_MULTI_WORKER = "CollectiveAllReduceStrategy"


def check_strategy(strategy, *, multi_worker, error=None):
    """Raises if keras_adv cannot train under `strategy`.

    Args:
        strategy: The model's `tf.distribute.Strategy`.
        multi_worker: Whether the stack's own `fit` works under
            `MultiWorkerMirroredStrategy`.
        error: What to say when it does not (the stack's reason), or None
            for Keras 3's.

    Raises:
        NotImplementedError: For a strategy the step cannot honour.
    """
    names = {cls.__name__ for cls in type(strategy).__mro__}
    if _MULTI_WORKER in names:
        if multi_worker:
            return
        raise NotImplementedError(error or (
            "Keras 3's own `fit` fails under tf.distribute.MultiWorkerMirroredStrategy "
            "(`ValueError: Attempt to convert a value (PerReplica...)`, an open "
            "upstream Keras issue), with or without keras_adv. For several "
            "machines, train with tf-keras, where keras_adv supports it; for "
            "several devices of one machine, use tf.distribute.MirroredStrategy."
        ))
    if names.isdisjoint(_ONE_WORKER):
        raise NotImplementedError(
            f"keras_adv cannot train under {type(strategy).__name__}: it builds one "
            f"perturbation from the global batch, which takes a strategy that runs "
            f"each step on every replica at once. Supported: no strategy, "
            f"OneDeviceStrategy, MirroredStrategy, and MultiWorkerMirroredStrategy "
            f"with tf-keras."
        )
