"""Your own multi-label dataset as a CSV file: for people who have no COCO annotation file.

Layout: `<root>/<split>.csv` (e.g. `train.csv`, `val.csv`), optionally `<root>/classes.txt`.

    image,labels
    photos/0001.jpg,dog|person
    photos/0002.jpg,car
    photos/0003.jpg,

- The header names the columns `image` and `labels` (other columns are allowed and ignored).
- `image`: the image's path relative to `<root>` (`/` separators; an absolute path must lie
  inside `<root>`). A path that leaves `<root>` (`..`, or absolute elsewhere) is refused, as
  COCO and VOC refuse it; to use images stored elsewhere, link their folder into `<root>`.
  Each image appears once per file.
- `labels`: class names separated by `|` (surrounding spaces are stripped); empty means the
  image shows none of the classes (kept, with all-zero targets, as COCO's unannotated images).
  Every row has the field (`photo.jpg,` for none): a row without it, or with more fields than
  the header (`photo.jpg,dog,cat`), is an error rather than a lost label, and so is a label
  with `,` or `;` that is not a class of classes.txt (`"dog,cat"` looks like two labels).
- Classes: `<root>/classes.txt` (one name per line, in the order of the model's outputs) if it
  exists; otherwise the labels of the training split, sorted. A label of another split that is
  not among them is an error naming the file, row and label: a class the model never trained on
  cannot be evaluated.
- Rows are numbered as lines of the file (the header is line 1). UTF-8 (a BOM is accepted).

Every mistake is a one-line `DataError` naming the file and the row.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from mlic.data.records import ObjectTable, SplitIndex
from mlic.errors import DataError

SEPARATOR = "|"
CLASSES_FILE = "classes.txt"
COLUMNS = ("image", "labels")


def csv_file(root: str | Path, split: str) -> Path:
    return Path(root) / f"{split}.csv"


def read_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, image path as written, labels) for each row; structural errors raised."""
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            missing = [c for c in COLUMNS if c not in fields]
            if missing:
                raise DataError(
                    f"{path}: the header must name the columns image,labels "
                    f"(found {','.join(fields) or 'no header'})"
                )
            rows = []
            for record in reader:
                line = reader.line_num
                if None in record:  # DictReader's key for fields beyond the header
                    raise DataError(
                        f"{path}, line {line}: {len(fields) + len(record[None])} fields, the "
                        f"header has {len(fields)}; labels are separated by {SEPARATOR!r}, not "
                        "',' (quote a field that holds a comma)"
                    )
                if record.get("labels") is None:  # the row ended before the labels field
                    raise DataError(
                        f"{path}, line {line}: no labels field; an image without labels is "
                        "written with an empty one (`photo.jpg,`)"
                    )
                image = (record.get("image") or "").strip()
                if not image:
                    raise DataError(f"{path}, line {line}: the image column is empty")
                text = record["labels"].strip()
                labels = [part.strip() for part in text.split(SEPARATOR)] if text else []
                if any(not label for label in labels):
                    raise DataError(
                        f"{path}, line {line}: empty label in {text!r} "
                        f"(labels are separated by a single {SEPARATOR!r})"
                    )
                rows.append((line, image, labels))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as CSV ({' '.join(str(exc).split())})") from None
    if not rows:
        raise DataError(f"{path}: the split is empty (a header and no rows)")
    return rows


def read_class_list(root: Path, train_split: str) -> tuple[list[str], str]:
    """(class names, where they came from): classes.txt, else the training split's labels."""
    path = root / CLASSES_FILE
    if path.is_file():
        try:
            names = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from None
        names = [n for n in names if n]
        if not names:
            raise DataError(f"{path}: the class list is empty")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(f"{path}: class {duplicates[0]!r} is listed twice")
        if any(SEPARATOR in n for n in names):
            raise DataError(f"{path}: a class name contains the label separator {SEPARATOR!r}")
        return names, str(path)
    train_file = csv_file(root, train_split)
    rows = read_rows(train_file)
    for line, _, labels in rows:
        for label in labels:
            if _looks_separated(label):
                raise DataError(f"{train_file}, line {line}: {_separated_message(label)}")
    names = sorted({label for _, _, labels in rows for label in labels})
    if not names:
        raise DataError(f"{train_file}: no row has a label, so there are no classes")
    return names, str(train_file)


def _looks_separated(label: str) -> bool:
    return "," in label or ";" in label


def _separated_message(label: str) -> str:
    mark = "," if "," in label else ";"
    return (
        f"label {label[:80]!r} looks like labels separated by {mark!r}; separate them with "
        f"{SEPARATOR!r} (a class name with ',' or ';' must be listed in {CLASSES_FILE})"
    )


def _image_file(root: Path, image: str) -> Path | str:
    """`root / image` if it stays inside `root` (lexically: a link inside `root` is the
    dataset's own choice), else the reason it does not."""
    if "\x00" in image:
        return "contains a NUL character"
    if os.path.isabs(image):
        top = os.path.normpath(os.path.abspath(root))
        if not os.path.normpath(image).startswith(top.rstrip(os.sep) + os.sep):
            return f"is an absolute path outside the dataset folder {root}"
        return Path(image)
    normal = os.path.normpath(image)
    if normal == os.pardir or normal.startswith(os.pardir + os.sep):
        return f"leaves the dataset folder {root} ('..'); image paths must stay inside it"
    return root / image


def read_csv_split(root: str | Path, split: str, train_split: str = "train") -> SplitIndex:
    """The labels of `<root>/<split>.csv` (module docstring); images are checked to exist."""
    root = Path(root)
    path = csv_file(root, split)
    rows = read_rows(path)
    class_names, class_source = read_class_list(root, train_split)
    class_of = {name: k for k, name in enumerate(class_names)}
    n, k = len(rows), len(class_names)
    targets = np.zeros((n, k), dtype=np.float32)
    files: list[str] = []
    first_line: dict[str, int] = {}
    for i, (line, image, labels) in enumerate(rows):
        file = _image_file(root, image)
        if isinstance(file, str):
            raise DataError(f"{path}, line {line}: image {image[:200]!r} {file}")
        key = os.path.normpath(file)
        if key in first_line:
            raise DataError(
                f"{path}, line {line}: image {image!r} is listed again (first on line "
                f"{first_line[key]}); merge its labels into one row"
            )
        first_line[key] = line
        if not file.is_file():
            raise DataError(f"{path}, line {line}: image file {file} not found")
        for label in labels:
            if label not in class_of:
                if _looks_separated(label):
                    raise DataError(f"{path}, line {line}: {_separated_message(label)}")
                where = (
                    "classes.txt"
                    if class_source.endswith(CLASSES_FILE)
                    else f"the training split {csv_file(root, train_split).name}"
                )
                raise DataError(f"{path}, line {line}: label {label!r} is not a class of {where}")
            targets[i, class_of[label]] = 1.0
        files.append(str(file))
    return SplitIndex(
        dataset="csv",
        split=split,
        source=path,
        class_names=class_names,
        files=np.array(files),
        targets=targets,
        ignore=np.zeros((n, k), dtype=bool),
        sizes=np.zeros((n, 2), dtype=np.int64),  # not read: the CSV does not state sizes
        objects=ObjectTable.from_rows([]),
    )


def write_csv_split(index: SplitIndex, path: str | Path) -> Path:
    """Write a split (e.g. the embedded COCO one) in this CSV format, image paths relative to
    the CSV's folder, which must hold the images (read the split through a link in that folder
    to use images stored elsewhere); the file is written atomically. Returns the path."""
    from mlic.runrecord import atomic_write_text

    path = Path(path)
    bad = [n for n in index.class_names if SEPARATOR in n or "\n" in n]
    if bad:
        raise DataError(f"class name {bad[0]!r} contains {SEPARATOR!r} or a line break")
    base = os.path.abspath(path.parent)
    rows = []
    for i in range(index.num_images):
        image = os.path.relpath(os.path.abspath(index.image_path(i)), base)
        if image == os.pardir or image.startswith(os.pardir + os.sep):
            raise DataError(
                f"{path}: image {index.image_path(i)} lies outside the CSV's folder {base}, "
                "where a CSV dataset's images must be; write the CSV into the image tree, or "
                "link the image folder into the CSV's folder and read the split through it"
            )
        image = Path(image).as_posix()
        labels = SEPARATOR.join(
            index.class_names[k] for k in np.flatnonzero(index.targets[i] > 0.5)
        )
        rows.append([image, labels])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path
