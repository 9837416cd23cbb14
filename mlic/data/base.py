"""The torch Dataset over a `SplitIndex`, and the collate function that drops unreadable images.

An image that cannot be decoded is, in training, a counted skip (the item is None, the collate
drops it and reports how many; the engine sums and logs them); in evaluation a DataError naming
the file, because silently dropping an image would change the reported mAP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from mlic.data.images import open_rgb
from mlic.data.records import ObjectTable, SplitIndex
from mlic.errors import DataError

log = logging.getLogger("mlic.data")

Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class MultiLabelDataset(Dataset):
    """Images of one split with multi-hot targets [K] (float32) and ignore masks [K] (bool)."""

    def __init__(
        self,
        index: SplitIndex,
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        skip_unreadable: bool = True,
        cache: bool = False,
    ) -> None:
        self.index = index
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        # cache=True only for deterministic transforms (the caller knows; see build_dataset).
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    # ------------------------------------------------------------------ labels
    @property
    def class_names(self) -> list[str]:
        return self.index.class_names

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def targets(self) -> np.ndarray:
        """[N, K] float32: 1 = positive, 0 = negative (or ignored)."""
        return self.index.targets

    @property
    def ignore(self) -> np.ndarray:
        """[N, K] bool: True = leave out of evaluation (VOC difficult-only); all False for COCO."""
        return self.index.ignore

    @property
    def image_files(self) -> list[Path]:
        return [Path(str(f)) for f in self.index.files]

    @property
    def num_without_labels(self) -> int:
        return self.index.num_without_labels

    @property
    def objects(self) -> ObjectTable:
        """Every annotated object (flat arrays), for the small-object analysis."""
        return self.index.objects

    @property
    def largest_area_fraction(self) -> np.ndarray:
        """[N, K]: area of each class's largest instance / image area (NaN: none); see
        `SplitIndex.largest_area_fraction`."""
        return self.index.largest_area_fraction

    @property
    def object_areas(self) -> list[list[tuple[int, float]]]:
        """Per image, (class_index, object area / image area) of each object."""
        return self.index.object_areas()

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return self.index.num_images

    def __getitem__(self, i: int) -> Item | None:
        image = self._cache.get(i) if self._cache is not None else None
        if image is None:
            image = self._load(i)
            if image is None:
                return None
            if self._cache is not None:
                self._cache[i] = image
        target = torch.from_numpy(self.index.targets[i].copy())  # [K] float32
        ignore = torch.from_numpy(self.index.ignore[i].copy())  # [K] bool
        return image, target, ignore  # image [3, S, S]

    def _load(self, i: int) -> torch.Tensor | None:
        path = self.index.image_path(i)
        try:
            image = open_rgb(path)
        except DataError as exc:
            if not self.skip_unreadable:
                raise
            log.warning("skipping unreadable image: %s", exc)
            return None
        return self.transform(image)

    def __repr__(self) -> str:
        i = self.index
        return (
            f"MultiLabelDataset({i.dataset} {i.split}: {i.num_images} images, "
            f"{i.num_classes} classes, from {i.source})"
        )


def collate_skip_unreadable(
    batch: list[Item | None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Stack the readable items: (images [B,3,S,S], targets [B,K], ignore [B,K], num_skipped).

    If every item was unreadable, B = 0 and the tensors are empty ([0,3,0,0], [0,0], [0,0]):
    the training loop skips such a batch.
    """
    items = [item for item in batch if item is not None]
    skipped = len(batch) - len(items)
    if not items:
        return (
            torch.empty(0, 3, 0, 0),
            torch.empty(0, 0),
            torch.empty(0, 0, dtype=torch.bool),
            skipped,
        )
    # default_collate stacks straight into shared memory inside a worker (one copy fewer than
    # torch.stack, which matters at 448 px: 2.4 MB per float32 image).
    images, targets, ignore = default_collate(items)
    return images, targets, ignore, skipped
