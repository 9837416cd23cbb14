"""A held-out part of the training split (for choosing per-class thresholds on images the model
did not train on), chosen the same way whenever the same configuration asks for it."""

from __future__ import annotations

import numpy as np

from mlic.data.records import SplitIndex
from mlic.errors import ConfigError


def take(index: SplitIndex, rows: np.ndarray) -> SplitIndex:
    """The images `rows` (ascending) of `index`, objects renumbered."""
    rows = np.asarray(rows, dtype=np.int64)
    new_row = np.full(index.num_images, -1, dtype=np.int64)
    new_row[rows] = np.arange(len(rows))
    obj = index.objects
    keep = new_row[obj.image_index] >= 0 if len(obj) else np.zeros(0, dtype=bool)
    objects = obj.subset(keep, new_row[obj.image_index[keep]])
    return SplitIndex(
        dataset=index.dataset,
        split=index.split,
        source=index.source,
        class_names=list(index.class_names),
        files=index.files[rows],
        targets=index.targets[rows],
        ignore=index.ignore[rows],
        sizes=index.sizes[rows],
        objects=objects,
    )


def holdout_rows(num_images: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows to train on, rows held out), both ascending: a fixed random `fraction` (at least
    one image, never all) held out, drawn from `seed`."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.calibration_fraction={fraction} is not in (0, 1)")
    count = min(max(1, round(fraction * num_images)), num_images - 1)
    if count < 1:
        raise ConfigError(
            f"data.calibration_fraction={fraction}: the training split has {num_images} image(s), "
            "too few to hold any out"
        )
    order = np.random.default_rng(seed).permutation(num_images)
    return np.sort(order[count:]), np.sort(order[:count])


def split_holdout(index: SplitIndex, fraction: float, seed: int) -> tuple[SplitIndex, SplitIndex]:
    """(training part, held-out part) of a training split; see `holdout_rows`."""
    train_rows, held_rows = holdout_rows(index.num_images, fraction, seed)
    return take(index, train_rows), take(index, held_rows)


def without_holdout(dataset, fraction: float, seed: int):
    """A training `MultiLabelDataset` less its held-out part (same transforms and skip rule)."""
    from mlic.data.base import MultiLabelDataset

    kept, _ = split_holdout(dataset.index, fraction, seed)
    return MultiLabelDataset(kept, dataset.transform, skip_unreadable=dataset.skip_unreadable)
