"""MS-COCO 2014 (and the embedded dataset's COCO tree) through pycocotools.

Layout: `<root>/annotations/instances_<split>.json` and `<root>/<split>/<file_name>`.
Conventions of Q2L/ASL, except where noted:
- category ids sorted ascending -> class indices 0..K-1 (COCO's ids are non-contiguous);
- `iscrowd` annotations count as labels;
- images without annotations are KEPT with all-zero targets and counted (ASL/Q2L iterate
  `coco.imgToAnns` and so silently drop them; DESIGN.md asks us to keep them);
- images in ascending id order, so "the first N images" is deterministic.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from mlic.data.records import ObjectTable, SplitIndex
from mlic.errors import DataError


def annotation_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def read_coco(root: str | Path, split: str) -> SplitIndex:
    """Labels of `<root>/annotations/instances_<split>.json`; images under `<root>/<split>/`."""
    root = Path(root)
    ann_file = annotation_file(root, split)
    image_dir = root / split
    if not ann_file.is_file():
        raise DataError(f"{ann_file}: annotation file not found")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")
    coco = _load(ann_file)

    cat_ids = sorted(coco.cats)
    if not cat_ids:
        raise DataError(f"{ann_file}: no categories")
    class_of = {cid: k for k, cid in enumerate(cat_ids)}
    class_names = [str(coco.cats[cid]["name"]) for cid in cat_ids]
    if len(set(class_names)) != len(class_names):
        raise DataError(f"{ann_file}: category names are not unique")

    img_ids = sorted(coco.imgs)
    if not img_ids:
        raise DataError(f"{ann_file}: the split has no images")
    row_of = {iid: i for i, iid in enumerate(img_ids)}
    n, k = len(img_ids), len(cat_ids)

    files = np.array([str(image_dir / coco.imgs[iid]["file_name"]) for iid in img_ids])
    sizes = np.array(
        [
            [_int(coco.imgs[iid].get("width", 0)), _int(coco.imgs[iid].get("height", 0))]
            for iid in img_ids
        ],
        dtype=np.int64,
    ).reshape(n, 2)
    targets = np.zeros((n, k), dtype=np.float32)
    rows: list[tuple[int, int, float, bool, bool]] = []
    for ann in coco.dataset.get("annotations", []):
        iid, cid = ann["image_id"], ann["category_id"]
        if cid not in class_of:
            raise DataError(
                f"{ann_file}: annotation {ann.get('id')} has category_id {cid}, "
                f"which is not among the file's {k} categories"
            )
        if iid not in row_of:
            raise DataError(
                f"{ann_file}: annotation {ann.get('id')} refers to image_id {iid}, "
                "which is not among the file's images"
            )
        i, c = row_of[iid], class_of[cid]
        targets[i, c] = 1.0
        rows.append((i, c, _area_fraction(ann, sizes[i]), False, bool(ann.get("iscrowd", 0))))
    return SplitIndex(
        dataset="coco",
        split=split,
        source=ann_file,
        class_names=class_names,
        files=files,
        targets=targets,
        ignore=np.zeros((n, k), dtype=bool),  # COCO has no "difficult" flag
        sizes=sizes,
        objects=ObjectTable.from_rows(rows),
    )


def _load(ann_file: Path) -> COCO:
    """Parse and check the structure ourselves (one-line errors), then let pycocotools index."""
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{ann_file}: not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{ann_file}: cannot read ({exc})") from None
    _check_structure(data, ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _check_structure(data: Any, ann_file: Path) -> None:
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a JSON object with images/annotations/categories")
    required = {
        "images": ("id", "file_name"),
        "categories": ("id", "name"),
        "annotations": ("image_id", "category_id"),
    }
    for key, fields in required.items():
        entries = data.get(key, [] if key == "annotations" else None)
        if not isinstance(entries, list):
            raise DataError(f"{ann_file}: '{key}' is missing or not a list")
        seen: set[Any] = set()
        for j, entry in enumerate(entries):
            if not isinstance(entry, dict) or any(f not in entry for f in fields):
                raise DataError(
                    f"{ann_file}: {key}[{j}] lacks one of the fields {', '.join(fields)}"
                )
            if key != "annotations":
                if entry["id"] in seen:
                    raise DataError(f"{ann_file}: duplicate {key[:-1]} id {entry['id']}")
                seen.add(entry["id"])


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _area_fraction(ann: dict[str, Any], size: np.ndarray) -> float:
    """COCO `area` (segmentation area, px^2) / image area; the bbox area if `area` is absent."""
    image_area = float(size[0]) * float(size[1])
    area = ann.get("area")
    if area is None and isinstance(ann.get("bbox"), list) and len(ann["bbox"]) == 4:
        area = float(ann["bbox"][2]) * float(ann["bbox"][3])
    try:
        fraction = float(area) / image_area if image_area > 0 else math.nan
    except (TypeError, ValueError):
        return math.nan
    return fraction
