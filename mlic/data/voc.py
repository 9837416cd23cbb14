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

from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET
from PIL import Image

from mlic.data.images import DECODE_ERRORS
from mlic.data.records import ObjectTable, SplitIndex
from mlic.errors import DataError

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
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
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

    try:
        lines = set_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{set_file}: cannot read ({exc})") from None
    # Main/<split>.txt holds one id per line (per-class files add a second column: ignored).
    ids = [line.split()[0] for line in lines if line.strip()]
    if not ids:
        raise DataError(f"{set_file}: the split has no images")

    n, k = len(ids), len(class_names)
    positive = np.zeros((n, k), dtype=bool)
    difficult_only = np.zeros((n, k), dtype=bool)
    sizes = np.zeros((n, 2), dtype=np.int64)
    rows: list[tuple[int, int, float, bool, bool]] = []
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
            area = _box_area(obj, xml_path)
            rows.append((i, c, area / image_area if image_area > 0 else np.nan, difficult, False))
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
    )


def _parse(xml_path: Path) -> Element:
    """defusedxml refuses entity declarations (billion laughs, external entities)."""
    try:
        return SafeET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise DataError(f"{xml_path}: annotation file not found") from None
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
    child = node.find(tag)
    try:
        return float(child.text)  # type: ignore[union-attr, arg-type]
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{xml_path}: <{tag}> is missing or not a number") from None


def _size(root: Element, xml_path: Path, image_path: Path) -> tuple[int, int]:
    """(width, height) from <size>; from the image header if the XML lacks it (0 if neither)."""
    size = root.find("size")
    if size is not None:
        w, h = _number(size, "width", xml_path), _number(size, "height", xml_path)
        if w > 0 and h > 0:
            return int(w), int(h)
    try:
        with open(image_path, "rb") as handle:  # ours to close: only the header is read
            return Image.open(handle).size
    except DECODE_ERRORS:
        return 0, 0  # the unreadable image is reported when it is loaded


def _box_area(obj: Element, xml_path: Path) -> float:
    """VOC boxes are inclusive 1-based pixel indices: area = (xmax-xmin+1)(ymax-ymin+1)."""
    box = obj.find("bndbox")
    if box is None:
        return float("nan")
    x0, y0 = _number(box, "xmin", xml_path), _number(box, "ymin", xml_path)
    x1, y1 = _number(box, "xmax", xml_path), _number(box, "ymax", xml_path)
    return max(x1 - x0 + 1.0, 0.0) * max(y1 - y0 + 1.0, 0.0)
