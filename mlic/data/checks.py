"""Checks across the splits of one dataset, made before training starts."""

from __future__ import annotations

import numpy as np

from mlic.data.records import SplitIndex


def unseen_in_training(train: SplitIndex, val: SplitIndex) -> list[str]:
    """Classes with positives in `val` but none in `train`: the model cannot learn them, so
    their AP on `val` says nothing about the method (a warning, not an error: a smoke run on
    the first N images meets it legitimately)."""
    in_train = train.targets.sum(axis=0) > 0
    in_val = val.targets.sum(axis=0) > 0
    return [val.class_names[k] for k in np.flatnonzero(in_val & ~in_train)]
