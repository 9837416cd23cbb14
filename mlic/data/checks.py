"""Checks across the splits of one dataset, made before training starts."""

from __future__ import annotations

import numpy as np

from mlic.data.records import SplitIndex
from mlic.errors import DataError


def unseen_in_training(train: SplitIndex, val: SplitIndex) -> list[str]:
    """Classes with positives in `val` but none in `train`: the model cannot learn them, so
    their AP on `val` says nothing about the method (a warning, not an error: a smoke run on
    the first N images meets it legitimately)."""
    in_train = train.targets.sum(axis=0) > 0
    in_val = val.targets.sum(axis=0) > 0
    return [val.class_names[k] for k in np.flatnonzero(in_val & ~in_train)]


def require_labels(index: SplitIndex, use: str) -> None:
    """Refuse a split without a single positive label (`"annotations": []`, a CSV whose labels
    are all empty) before any work: nothing can be learned or measured on it (mAP has no class
    to average), so it is one clear error rather than a crash after a whole epoch. `use`
    completes "cannot ...", e.g. "evaluate a model"."""
    positives = (index.targets > 0.5) & ~index.ignore
    if not positives.any():
        raise DataError(
            f"{index.source}: split {index.split!r} has no labels ({index.num_images} images read, "
            f"none with a class): it cannot {use}"
        )
