"""MS-COCO 2014 (and the embedded dataset's COCO tree) through pycocotools.

Layout: `<root>/annotations/instances_<split>.json` and `<root>/<split>/<file_name>`.
Conventions of Q2L/ASL, except where noted:
- category ids sorted ascending -> class indices 0..K-1 (COCO's ids are non-contiguous);
- `iscrowd` annotations count as labels;
- images without annotations are KEPT with all-zero targets and counted (ASL/Q2L iterate
  `coco.imgToAnns` and so silently drop them; they are part of val2014 as published);
- images in ascending id order, so "the first N images" is deterministic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from mlic.data.records import (
    MAX_IMAGE_SIDE,
    ObjectTable,
    SplitIndex,
    area_fraction,
    box_fraction,
    check_label_matrix,
    file_inside,
    is_number,
)
from mlic.errors import DataError
from mlic.safeload import load_json

log = logging.getLogger("mlic.data")


def annotation_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def read_coco(root: str | Path, split: str) -> SplitIndex:
    """Labels of `<root>/annotations/instances_<split>.json`; images under `<root>/<split>/`."""
    root = Path(root)
    ann_file = annotation_file(root, split)
    image_dir = root / split
    if not ann_file.exists():
        raise DataError(f"{ann_file}: annotation file not found")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")
    coco = _load(ann_file)
    files = _image_files(coco, image_dir, ann_file)

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
    check_label_matrix(n, k, ann_file)

    files = np.array([files[iid] for iid in img_ids])
    sizes = np.array(
        [
            [int(coco.imgs[iid].get("width", 0)), int(coco.imgs[iid].get("height", 0))]
            for iid in img_ids
        ],
        dtype=np.int64,
    ).reshape(n, 2)
    targets = np.zeros((n, k), dtype=np.float32)
    rows: list[tuple[int, int, float, bool, bool, Any]] = []
    invalid = 0
    for ann in coco.dataset["annotations"]:
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
        fraction = _area_fraction(ann, sizes[i])
        if fraction is None:  # an unusable box or area: the label stands, its size is unknown
            invalid += 1
            fraction = math.nan
        box = None
        if math.isfinite(fraction) and ann.get("bbox") is not None:  # a checked bbox
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = box_fraction(x, y, x + w, y + h, *map(float, sizes[i]))
        rows.append((i, c, fraction, False, bool(ann.get("iscrowd", 0)), box))
    if invalid:
        log.warning(
            "%s: %d annotation(s) have an unusable bbox or area (non-numeric, NaN, negative, "
            "zero-sized or larger than the image); their labels are kept, their size is unknown",
            ann_file,
            invalid,
        )
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
        invalid_boxes=invalid,
    )


def _image_files(coco: COCO, image_dir: Path, ann_file: Path) -> dict[Any, str]:
    """Each image's path, refusing names that are absolute or climb out of the image folder
    (such a file could be another split's image, evaluated without a word)."""
    files = {}
    for iid, image in coco.imgs.items():
        path = file_inside(image_dir, image["file_name"])
        if isinstance(path, str):
            raise DataError(
                f"{ann_file}: image {iid} file_name {_short(image['file_name'])} {path}"
            )
        files[iid] = str(path)
    return files


def _load(ann_file: Path) -> COCO:
    """Parse (bounded in size and depth) and check the structure ourselves (one-line errors),
    then let pycocotools index."""
    data = load_json(ann_file)
    _check_structure(data, ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


# Per list: field -> (required, check, what the check wants). Ids are JSON integers, as in COCO.
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_side(v: Any) -> bool:
    return is_number(v) and 0 <= v <= MAX_IMAGE_SIDE


_FIELDS: dict[str, dict[str, tuple[bool, Any, str]]] = {
    "images": {
        "id": (True, _is_int, "an integer"),
        "file_name": (True, lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        "width": (False, _is_side, f"a number of pixels from 0 to {MAX_IMAGE_SIDE:,}"),
        "height": (False, _is_side, f"a number of pixels from 0 to {MAX_IMAGE_SIDE:,}"),
    },
    "categories": {
        "id": (True, _is_int, "an integer"),
        "name": (True, lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    },
    "annotations": {
        "id": (True, _is_int, "an integer"),  # pycocotools indexes by it
        "image_id": (True, _is_int, "an integer"),
        "category_id": (True, _is_int, "an integer"),
        "iscrowd": (False, lambda v: v in (0, 1) and not isinstance(v, float), "0 or 1"),
    },
}


def _check_structure(data: Any, ann_file: Path) -> None:
    """Types of every field we read; `annotations` must be there (`[]` for a split without
    labels): a file without the key is malformed, not a split of negatives."""
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a JSON object with images/annotations/categories")
    for key, fields in _FIELDS.items():
        entries = data.get(key)
        if not isinstance(entries, list):
            hint = ' (a split without labels has "annotations": [])' if key == "annotations" else ""
            raise DataError(f"{ann_file}: '{key}' is missing or not a list{hint}")
        seen: set[Any] = set()
        for j, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise DataError(f"{ann_file}: {key}[{j}] is not a JSON object")
            for name, (required, check, wants) in fields.items():
                if name not in entry:
                    if required:
                        raise DataError(
                            f"{ann_file}: {key}[{j}] lacks one of the fields "
                            f"{', '.join(f for f, spec in fields.items() if spec[0])}"
                        )
                    continue
                if not check(entry[name]):
                    raise DataError(
                        f"{ann_file}: {key}[{j}].{name} is {_short(entry[name])}, expected {wants}"
                    )
            if key != "annotations":
                if entry["id"] in seen:
                    raise DataError(f"{ann_file}: duplicate {key[:-1]} id {entry['id']}")
                seen.add(entry["id"])


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _area_fraction(ann: dict[str, Any], size: np.ndarray) -> float | None:
    """COCO `area` (segmentation area, px^2) / image area, the bbox area if `area` is absent;
    NaN when neither is given or the image size is unknown; None when what is given is
    unusable (counted by the caller)."""
    image_area = float(size[0]) * float(size[1])
    bbox = ann.get("bbox")
    if bbox is not None:
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))):
            return None
        x, y, w, h = bbox
        if x < 0 or y < 0 or w <= 0 or h <= 0:
            return None
        if area_fraction(float(w) * float(h), image_area) is None:
            return None
    area = ann.get("area")
    if area is None:
        if bbox is None:
            return math.nan
        area = float(bbox[2]) * float(bbox[3])
    return area_fraction(area, image_area)
