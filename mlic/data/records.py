"""What one split of a dataset holds: image files, labels, the "ignore" mask and the objects.

Both loaders (COCO, VOC) produce a `SplitIndex`; the torch `MultiLabelDataset`, the statistics
and the small-object analysis all read it. It holds NumPy arrays rather than Python lists, so
that DataLoader workers (forked) share it instead of copying it page by page as reference
counts change (the known PyTorch issue with large Python lists in a Dataset).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mlic.errors import DataError

# Limits on what an annotation may make us allocate (docs/reliability.md, "Bad input").
MAX_LABEL_ENTRIES = 1 << 28  # images x classes: 1 GiB of float32 targets (COCO: 6.6 M)
MAX_IMAGE_SIDE = 100_000  # px, an annotated width or height


@dataclass(frozen=True)
class ObjectTable:
    """One row per annotated object (flat arrays of equal length M), for the small-object
    analysis (how much of the image it covers) and the attention analysis (where it is)."""

    image_index: np.ndarray  # [M] int64, row in the SplitIndex
    class_index: np.ndarray  # [M] int64, 0..K-1
    area_fraction: np.ndarray  # [M] float32, object area / image area (0-1); NaN if unknown
    difficult: np.ndarray  # [M] bool, VOC `difficult`; all False for COCO
    crowd: np.ndarray  # [M] bool, COCO `iscrowd`; all False for VOC
    # [M, 4] float32: the box (x0, y0, x1, y1) as fractions of the image's width and height,
    # clipped to [0, 1]; NaN where there is no usable box or the image size is unknown.
    box: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    @staticmethod
    def from_rows(rows: list[tuple[int, int, float, bool, bool, Any]]) -> ObjectTable:
        """Rows of (image_index, class_index, area_fraction, difficult, crowd, box), the box a
        (x0, y0, x1, y1) tuple of image fractions or None."""
        if not rows:
            empty_i = np.zeros(0, dtype=np.int64)
            empty_b = np.zeros(0, dtype=bool)
            return ObjectTable(empty_i, empty_i, np.zeros(0, np.float32), empty_b, empty_b)
        img, cls, area, diff, crowd, box = zip(*rows, strict=True)
        nan_box = (math.nan,) * 4
        boxes = np.asarray([nan_box if b is None else b for b in box], dtype=np.float32)
        return ObjectTable(
            image_index=np.asarray(img, dtype=np.int64),
            class_index=np.asarray(cls, dtype=np.int64),
            area_fraction=np.asarray(area, dtype=np.float32),
            difficult=np.asarray(diff, dtype=bool),
            crowd=np.asarray(crowd, dtype=bool),
            box=np.clip(boxes, 0.0, 1.0),  # NaN stays NaN
        )

    def subset(self, keep: np.ndarray, image_index: np.ndarray | None = None) -> ObjectTable:
        """The rows `keep` (a mask), with their image indices replaced by `image_index` when
        the images were renumbered."""
        return ObjectTable(
            self.image_index[keep] if image_index is None else image_index,
            self.class_index[keep],
            self.area_fraction[keep],
            self.difficult[keep],
            self.crowd[keep],
            self.box[keep],
        )

    def select_images(self, n: int) -> ObjectTable:
        """The objects of the first n images."""
        return self.subset(self.image_index < n)


def box_fraction(
    x0: float, y0: float, x1: float, y1: float, width: float, height: float
) -> tuple[float, float, float, float] | None:
    """A pixel box as fractions of the image; None for an unknown image size or an empty box."""
    if not (width > 0 and height > 0 and x1 > x0 and y1 > y0):  # NaN fails too
        return None
    return (x0 / width, y0 / height, x1 / width, y1 / height)


@dataclass(frozen=True)
class SplitIndex:
    """The labels of one split, in a fixed order (COCO: ascending image id; VOC: the order of
    the ImageSets file)."""

    dataset: str  # "coco" | "voc"
    split: str
    source: Path  # the annotation file (COCO) or folder (VOC) the labels came from
    class_names: list[str]
    files: np.ndarray  # [N] str, image paths
    targets: np.ndarray  # [N, K] float32, 1 = positive, 0 = negative
    ignore: np.ndarray  # [N, K] bool, True = leave out of evaluation (VOC difficult-only)
    sizes: np.ndarray  # [N, 2] int64, (width, height) in pixels as annotated
    objects: ObjectTable = field(repr=False)
    # Annotations of the whole file whose box or area is unusable (non-numeric, NaN, negative,
    # zero-sized, larger than the image): they still label their image; their size is unknown.
    invalid_boxes: int = 0

    def __post_init__(self) -> None:
        n, k = len(self.files), len(self.class_names)
        assert self.targets.shape == (n, k), (self.targets.shape, n, k)
        assert self.ignore.shape == (n, k), (self.ignore.shape, n, k)
        assert self.sizes.shape == (n, 2), self.sizes.shape

    @property
    def num_images(self) -> int:
        return int(self.files.shape[0])

    def __len__(self) -> int:
        return self.num_images

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_without_labels(self) -> int:
        """Images with no positive label (kept, with all-zero targets)."""
        return int((self.targets.sum(axis=1) == 0).sum())

    def image_path(self, i: int) -> Path:
        return Path(str(self.files[i]))

    def input_paths(self) -> list[Path]:
        """What reading this split read: the annotation file (COCO), the VOC2007 folder, the
        CSV files and classes.txt beside them, and every image. A command that reads the split
        must not write over any of them (a folder stands for everything inside it)."""
        source = Path(self.source)
        paths = [Path(str(f)) for f in self.files]
        if self.dataset == "voc":
            return [source.parent, *paths]
        if self.dataset == "csv":
            return [*sorted(source.parent.glob("*.csv")), source.parent / "classes.txt", *paths]
        return [source, *paths]

    def head(self, n: int) -> SplitIndex:
        """Only the first n images (deterministic; for smoke runs). n <= 0 keeps all."""
        if n <= 0 or n >= self.num_images:
            return self
        return SplitIndex(
            dataset=self.dataset,
            split=self.split,
            source=self.source,
            class_names=list(self.class_names),
            files=self.files[:n],
            targets=self.targets[:n],
            ignore=self.ignore[:n],
            sizes=self.sizes[:n],
            objects=self.objects.select_images(n),
            invalid_boxes=self.invalid_boxes,
        )

    @cached_property
    def largest_area_fraction(self) -> np.ndarray:
        """[N, K] float64: per image and class, the area of the class's LARGEST instance as a
        fraction of the image's area (0-1); NaN where the class has no counted instance with a
        known area. Computed once per split, for "AP by object size" (`mlic.metrics`).

        Which instances count: every COCO annotation (crowd regions too: they make the label);
        VOC's non-difficult objects only (a difficult-only class is ignored in evaluation, so
        its area never matters). The area is COCO's `area` (the segment, as COCOeval's size
        ranges use; the bbox w*h only when a file lacks `area`) and VOC's box. A fraction
        rather than pixels, so that one rule covers every image size (`mlic.metrics`).
        """
        out = np.full((self.num_images, self.num_classes), np.nan)
        obj = self.objects
        area = obj.area_fraction.astype(np.float64)
        keep = ~obj.difficult & np.isfinite(area)
        # fmax ignores the NaN start value: the first known area of a pair replaces it.
        np.fmax.at(out, (obj.image_index[keep], obj.class_index[keep]), area[keep])
        return out

    def object_areas(self) -> list[list[tuple[int, float]]]:
        """Per image, (class_index, area / image_area) of each object: the small-object view."""
        out: list[list[tuple[int, float]]] = [[] for _ in range(self.num_images)]
        obj = self.objects
        for i, c, a in zip(
            obj.image_index.tolist(),
            obj.class_index.tolist(),
            obj.area_fraction.tolist(),
            strict=True,
        ):
            out[i].append((c, a))
        return out


def check_label_matrix(num_images: int, num_classes: int, source: Path) -> None:
    """Refuse a split whose label matrix would not fit a sane amount of memory."""
    if num_images * num_classes > MAX_LABEL_ENTRIES:
        raise DataError(
            f"{source}: {num_images:,} images x {num_classes:,} classes is over the limit of "
            f"{MAX_LABEL_ENTRIES:,} label entries"
        )


def is_number(value: Any) -> bool:
    """A finite JSON/XML number (not a bool, not NaN or infinite)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))
    )


def area_fraction(area: float, image_area: float) -> float | None:
    """Object area / image area; NaN if the image size is unknown; None if the area is unusable
    (not a finite positive number, or larger than the image)."""
    if not is_number(area) or area <= 0:
        return None
    if not image_area > 0:
        return math.nan
    fraction = float(area) / image_area
    return fraction if fraction <= 1.0 + 1e-6 else None


def file_inside(folder: Path, name: Any) -> Path | str:
    """`folder / name` if `name` is a relative path that stays inside `folder`; otherwise the
    reason it does not (absolute, climbs out with '..', empty, not a string)."""
    if not isinstance(name, str) or not name:
        return "is not a non-empty string"
    if "\x00" in name:
        return "contains a NUL character"
    if os.path.isabs(name):
        return "is an absolute path; file names must be relative to the split's image folder"
    normal = os.path.normpath(name)
    if normal == os.curdir or normal == os.pardir or normal.startswith(os.pardir + os.sep):
        return "leaves the split's image folder ('..'); file names must stay inside it"
    return folder / name
