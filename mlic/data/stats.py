"""`mlic data stats`: what a split holds, as a JSON-able dict (the CLI prints it).

With verify=True every image is decoded (in threads: PIL releases the GIL while decoding)
and the unreadable ones are listed by file name, so a broken download is found before a
25-epoch run, not during it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from mlic.data.images import open_rgb
from mlic.data.records import SplitIndex
from mlic.data.splits import read_split
from mlic.errors import DataError

SMALL_OBJECT = 0.05  # of the image area: the "small object" threshold of the embedded dataset


def dataset_stats(
    dataset: Literal["coco", "voc"],
    root: str | Path,
    split: str,
    verify: bool = False,
    *,
    workers: int | None = None,
) -> dict[str, Any]:
    """Counts of one split; `root` holds `annotations/` (COCO) or `VOC2007/` (VOC)."""
    index = read_split(dataset, root, split)
    stats = split_stats(index)
    stats["root"] = str(root)
    if verify:
        unreadable = find_unreadable(index, workers=workers)
        stats["verified"] = True
        stats["num_unreadable"] = len(unreadable)
        stats["unreadable"] = unreadable
    return stats


def split_stats(index: SplitIndex) -> dict[str, Any]:
    names = index.class_names
    obj = index.objects
    positives = index.targets.sum(axis=0).astype(int)
    stats: dict[str, Any] = {
        "dataset": index.dataset,
        "split": index.split,
        "source": str(index.source),
        "num_images": index.num_images,
        "num_classes": index.num_classes,
        "class_names": list(names),
        "positives_per_class": {n: int(p) for n, p in zip(names, positives, strict=True)},
        "labels_per_image": round(float(index.targets.sum(axis=1).mean()), 4),
        "images_without_labels": index.num_without_labels,
        "num_objects": len(obj),
        "small_objects": int((obj.area_fraction <= SMALL_OBJECT).sum()),
        # Unusable boxes or areas (NaN, negative, zero-sized, larger than the image): their
        # labels count, their sizes are unknown (so they are not "small").
        "invalid_boxes": index.invalid_boxes,
    }
    if index.dataset == "coco":
        stats["crowd_objects"] = int(obj.crowd.sum())
    if index.dataset == "voc":
        ignored = index.ignore.sum(axis=0).astype(int)
        stats["difficult_objects"] = int(obj.difficult.sum())
        # (image, class) pairs that only difficult objects have: ignored in evaluation.
        stats["difficult_only_entries"] = int(ignored.sum())
        stats["difficult_only_per_class"] = {n: int(c) for n, c in zip(names, ignored, strict=True)}
    return stats


def find_unreadable(index: SplitIndex, workers: int | None = None) -> list[str]:
    """File names (relative to the image folder) of the images that do not decode, in order."""
    paths = [index.image_path(i) for i in range(index.num_images)]
    errors = decode_errors(paths, workers=workers)
    return [path.name for path, error in zip(paths, errors, strict=True) if error]


def decode_errors(paths: Sequence[Path], workers: int | None = None) -> list[str | None]:
    """For each image, in order: None if it decodes, else the one-line DataError saying why
    (`mlic data stats --verify` and `mlic data check` both decode this way)."""

    def error(path: Path) -> str | None:
        try:
            open_rgb(path)
            return None
        except DataError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(error, paths))
