"""The semi-supervised mode: a fraction of the training split keeps its labels.

VAT's divergence term needs no label, so VAT trains on the whole training
split, the unlabelled rows in the same batches as the labelled ones, by the
library's documented recipe (docs/methods.md, VAT): an unlabelled row gets the label 0
and sample weight 0, so the clean loss ignores it, and a labelled row the
weight `len(x_train) / len(x_labeled)`, because Keras divides a weighted loss
by the number of examples in the batch, not by the sum of the weights. The
supervised term then weighs per step what it weighs in plain training on the
labelled part.

Every other configuration, plain included, needs labels: it trains on the
labelled part alone, repeated to the training split's length, so that it
takes as many steps per epoch and sees each labelled example as often as
VAT does. The only difference left is VAT's use of the unlabelled rows.
"""

import numpy as np

__all__ = ["LABEL_FREE", "labeled_rows", "labeled_weight", "training_set"]

# The methods whose added term needs no label, and so learns from unlabelled rows.
LABEL_FREE = ("vat",)


def labeled_rows(labels, fraction, *, seed=0):
    """The rows of the training split that keep their labels.

    Stratified: each class keeps `fraction` of its rows (rounded, at least
    one), drawn with a fixed `seed`, so every configuration and every seed
    of an ablation sees the same labelled rows.

    Args:
        labels: The training split's integer labels.
        fraction: In (0, 1].
        seed: Seed of the draw.

    Returns:
        The kept row indices, ascending.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    kept = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        count = max(1, int(round(fraction * len(rows))))
        kept.append(rng.choice(rows, size=count, replace=False))
    return np.sort(np.concatenate(kept))


def labeled_weight(total, labeled):
    """The sample weight of a labelled row among `total` rows of which
    `labeled` carry labels (the rest weigh 0)."""
    return total / labeled


def _take(x, rows):
    """Rows of the model's inputs: an array, or a list or dict of arrays."""
    if isinstance(x, dict):
        return {name: value[rows] for name, value in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(value[rows] for value in x)
    return x[rows]


def training_set(x, y, labeled, method_name):
    """What `fit` gets for one configuration in the semi-supervised mode.

    Args:
        x, y: The whole training split (inputs and labels).
        labeled: `labeled_rows` of it.
        method_name: The configuration's method (`MethodSpec.name`).

    Returns:
        `(x, y, sample_weight)`: for a method in `LABEL_FREE`, every row,
        unlabelled rows with label 0 and weight 0, labelled ones with
        `labeled_weight`; for any other, the labelled rows repeated to the
        length of `y` (cyclically; `fit` shuffles them), and no weights.
    """
    total = len(y)
    if method_name in LABEL_FREE:
        is_labeled = np.zeros(total, dtype=bool)
        is_labeled[labeled] = True
        # The label is never read where the weight is 0; 0 keeps it a valid class.
        labels = np.where(is_labeled, y, 0).astype(np.asarray(y).dtype)
        weights = np.where(is_labeled, labeled_weight(total, len(labeled)), 0.0).astype("float32")
        return x, labels, weights
    rows = np.resize(labeled, total)
    return _take(x, rows), np.asarray(y)[rows], None
