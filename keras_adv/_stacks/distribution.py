"""Which `tf.distribute` strategies an adversarial step can honour: those that
run the step on every replica at once, with `all_gather` and `all_reduce` in
its replica context (the perturbation is built from the global batch). Any
other is refused rather than run as something else.
"""

__all__ = ["check_strategy"]

# By class name: tf.distribute.MultiWorkerMirroredStrategy's class is
# CollectiveAllReduceStrategy, and the default strategy's class is private.
_ONE_WORKER = {"_DefaultDistributionStrategy", "OneDeviceStrategy", "MirroredStrategy"}
_MULTI_WORKER = "CollectiveAllReduceStrategy"


def check_strategy(strategy, *, multi_worker, error=None):
    """Raises `NotImplementedError` if keras_adv cannot train under `strategy`;
    `multi_worker`: whether the stack's own `fit` works under
    MultiWorkerMirroredStrategy, else `error` says why (None: Keras 3's reason)."""
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
