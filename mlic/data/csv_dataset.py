"""Your own multi-label dataset as a CSV file: for people who have no COCO annotation file.

Layout: `<root>/<split>.csv` (e.g. `train.csv`, `val.csv`), optionally `<root>/classes.txt`.

    image,labels
    photos/0001.jpg,dog|person
    photos/0002.jpg,car
    photos/0003.jpg,

- The header names the columns `image` and `labels` (other columns are allowed and ignored).
- `image`: the image's path relative to `<root>` (`/` separators; an absolute path is used as
  it is). Each image appears once per file.
- `labels`: class names separated by `|` (surrounding spaces are stripped); empty means the
  image shows none of the classes (kept, with all-zero targets, as COCO's unannotated images).
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
                image = (record.get("image") or "").strip()
                if not image:
                    raise DataError(f"{path}, line {line}: the image column is empty")
                text = (record.get("labels") or "").strip()
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
    names = sorted({label for _, _, labels in read_rows(train_file) for label in labels})
    if not names:
        raise DataError(f"{train_file}: no row has a label, so there are no classes")
    return names, str(train_file)


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
        file = root / image
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
    the CSV's folder; the file is written atomically. Returns the path."""
    from mlic.runrecord import atomic_write_text

    path = Path(path)
    bad = [n for n in index.class_names if SEPARATOR in n or "\n" in n]
    if bad:
        raise DataError(f"class name {bad[0]!r} contains {SEPARATOR!r} or a line break")
    base = path.parent.resolve()
    rows = []
    for i in range(index.num_images):
        image = Path(os.path.relpath(index.image_path(i).resolve(), base)).as_posix()
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
