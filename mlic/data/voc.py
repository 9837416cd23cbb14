"""PASCAL VOC 2007 (and the embedded dataset's VOC tree) through defusedxml.

Layout: `<root>/VOC2007/{Annotations/<id>.xml, ImageSets/Main/<split>.txt, JPEGImages/<id>.jpg}`.
Labels follow the VOC devkit: per image and class, positive if any non-difficult object has
the class; if only `difficult` objects have it, the pair is IGNORED in evaluation (neither
positive nor negative; ignore=True, target 0), not a silent negative.

The class list is the standard 20 in the standard order, unless `VOC2007/classes.txt` exists
(one name per line): our extension, written by the embedded generator, whose classes are not
VOC's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET
from PIL import Image

from mlic.data.images import DECODE_ERRORS
from mlic.data.records import (
    MAX_IMAGE_SIDE,
    ObjectTable,
    SplitIndex,
    area_fraction,
    box_fraction,
    check_label_matrix,
)
from mlic.errors import DataError
from mlic.safeload import MAX_TEXT_BYTES, MAX_XML_BYTES, open_regular, read_bytes, read_text

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
CLASSES_FILE = "classes.txt"


def voc_folder(root: str | Path) -> Path:
    """`root` holds VOC2007/ (the devkit folder); a path to VOC2007 itself is accepted too."""
    root = Path(root)
    if (root / "VOC2007").is_dir():
        return root / "VOC2007"
    if root.name == "VOC2007" and (root / "Annotations").is_dir():
        return root
    raise DataError(f"{root}: no VOC2007 folder (expected {root / 'VOC2007' / 'Annotations'})")


def read_class_list(voc: Path) -> tuple[list[str], str]:
    """(class names, where they came from): VOC2007/classes.txt if present, else the standard 20."""
    path = voc / CLASSES_FILE
    if not path.is_file():
        return list(VOC_CLASSES), "the standard VOC 2007 classes"
    names = [line.strip() for line in read_text(path, MAX_TEXT_BYTES).splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"{path}: the class list is empty")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: the class list has duplicate names")
    return names, str(path)


def read_voc(root: str | Path, split: str) -> SplitIndex:
    """Labels of the image set `split` (e.g. trainval, test) of the VOC2007 folder under `root`."""
    voc = voc_folder(root)
    ann_dir, image_dir = voc / "Annotations", voc / "JPEGImages"
    set_file = voc / "ImageSets" / "Main" / f"{split}.txt"
    if not set_file.is_file():
        raise DataError(f"{set_file}: image set file not found")
    if not ann_dir.is_dir():
        raise DataError(f"{ann_dir}: annotation folder not found")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")
    class_names, class_source = read_class_list(voc)
    class_of = {name: k for k, name in enumerate(class_names)}

    lines = read_text(set_file, MAX_TEXT_BYTES).splitlines()
    # Main/<split>.txt holds one id per line (per-class files add a second column: ignored).
    ids = [line.split()[0] for line in lines if line.strip()]
    if not ids:
        raise DataError(f"{set_file}: the split has no images")

    bad_ids = [i for i in ids if i in (".", "..") or "/" in i or "\\" in i or "\x00" in i]
    if bad_ids:
        raise DataError(
            f"{set_file}: image id {bad_ids[0][:60]!r} is not a plain name (ids name files in "
            "Annotations/ and JPEGImages/ and must not leave them)"
        )
    n, k = len(ids), len(class_names)
    check_label_matrix(n, k, set_file)
    positive = np.zeros((n, k), dtype=bool)
    difficult_only = np.zeros((n, k), dtype=bool)
    sizes = np.zeros((n, 2), dtype=np.int64)
    rows: list[tuple[int, int, float, bool, bool, Any]] = []
    invalid = 0
    files = np.array([str(image_dir / f"{image_id}.jpg") for image_id in ids])
    for i, image_id in enumerate(ids):
        xml_path = ann_dir / f"{image_id}.xml"
        tree = _parse(xml_path)
        sizes[i] = _size(tree, xml_path, Path(str(files[i])))
        image_area = float(sizes[i, 0] * sizes[i, 1])
        for obj in tree.iter("object"):
            name = _text(obj, "name", xml_path).strip()
            if name not in class_of:
                raise DataError(
                    f"{xml_path}: object class {name!r} is not in the class list ({class_source})"
                )
            c = class_of[name]
            difficult = _flag(obj, "difficult", xml_path)
            if difficult:
                difficult_only[i, c] = True
            else:
                positive[i, c] = True
            corners = _box_corners(obj, xml_path)
            fraction = np.nan if corners is None else area_fraction(_box_area(corners), image_area)
            if fraction is None:  # an unusable box: the label stands, its size is unknown
                invalid += 1
                fraction = np.nan
            box = None
            if np.isfinite(fraction):  # a usable box: pixel indices 1..W, inclusive
                x0, y0, x1, y1 = corners
                box = box_fraction(x0 - 1.0, y0 - 1.0, x1, y1, *map(float, sizes[i]))
            rows.append((i, c, fraction, difficult, False, box))
    return SplitIndex(
        dataset="voc",
        split=split,
        source=ann_dir,
        class_names=class_names,
        files=files,
        targets=positive.astype(np.float32),
        ignore=difficult_only & ~positive,
        sizes=sizes,
        objects=ObjectTable.from_rows(rows),
        invalid_boxes=invalid,
    )


def _parse(xml_path: Path) -> Element:
    """defusedxml refuses entity declarations (billion laughs, external entities); the file is
    read (a regular file, bounded in size) before it is parsed."""
    if not xml_path.exists():
        raise DataError(f"{xml_path}: annotation file not found")
    data = read_bytes(xml_path, MAX_XML_BYTES)
    try:
        return SafeET.fromstring(data)
    except ParseError as exc:
        raise DataError(f"{xml_path}: XML does not parse ({exc})") from None
    except DefusedXmlException as exc:
        raise DataError(
            f"{xml_path}: refused: the XML declares entities or a DTD "
            f"(possible entity-expansion attack; {type(exc).__name__})"
        ) from None
    except OSError as exc:
        raise DataError(f"{xml_path}: cannot read ({exc})") from None


def _text(node: Element, tag: str, xml_path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise DataError(f"{xml_path}: an <object> lacks <{tag}>")
    return child.text


def _flag(node: Element, tag: str, xml_path: Path) -> bool:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return False  # VOC: absent means 0
    try:
        return int(float(child.text)) != 0
    except ValueError:
        raise DataError(f"{xml_path}: <{tag}> is {child.text!r}, not 0 or 1") from None


def _number(node: Element, tag: str, xml_path: Path) -> float:
    """A number, or NaN for a value that is not one (an unusable box is counted, not fatal)."""
    child = node.find(tag)
    if child is None or child.text is None:
        raise DataError(f"{xml_path}: <{tag}> is missing")
    try:
        value = float(child.text)
    except ValueError:
        return float("nan")
    return value if math.isfinite(value) else float("nan")


def _size(root: Element, xml_path: Path, image_path: Path) -> tuple[int, int]:
    """(width, height) from <size>; from the image header if the XML lacks it (0 if neither)."""
    size = root.find("size")
    if size is not None:
        w, h = _number(size, "width", xml_path), _number(size, "height", xml_path)
        if not (0 <= w <= MAX_IMAGE_SIDE and 0 <= h <= MAX_IMAGE_SIDE):  # NaN fails too
            raise DataError(
                f"{xml_path}: <size> {w} x {h} is not a width and height from 0 to "
                f"{MAX_IMAGE_SIDE:,} px"
            )
        if w > 0 and h > 0:
            return int(w), int(h)
    try:
        with open_regular(image_path) as handle:  # ours to close: only the header is read
            return Image.open(handle).size
    except (*DECODE_ERRORS, DataError):
        return 0, 0  # the unreadable image is reported when it is loaded


def _box_corners(obj: Element, xml_path: Path) -> tuple[float, float, float, float] | None:
    """The object's <bndbox> as (xmin, ymin, xmax, ymax), read once; None without a box."""
    box = obj.find("bndbox")
    if box is None:
        return None
    x0, y0 = _number(box, "xmin", xml_path), _number(box, "ymin", xml_path)
    x1, y1 = _number(box, "xmax", xml_path), _number(box, "ymax", xml_path)
    return x0, y0, x1, y1


def _box_area(corners: tuple[float, float, float, float]) -> float:
    """VOC boxes are inclusive 1-based pixel indices: area = (xmax-xmin+1)(ymax-ymin+1);
    NaN or 0 for an unusable box (the caller counts those)."""
    x0, y0, x1, y1 = corners
    if not min(x0, y0) >= 0:  # negative or NaN: unusable (area_fraction refuses NaN)
        return float("nan")
    return (x1 - x0 + 1.0) * (y1 - y0 + 1.0) if x1 >= x0 and y1 >= y0 else 0.0
