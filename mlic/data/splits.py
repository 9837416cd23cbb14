"""Which loader reads which dataset (no torch: the statistics command uses it too).

The loaders are imported when a split is read, so that importing the engine (the benchmarks do,
on machines that may lack pycocotools or defusedxml) needs neither annotation library.
"""

from __future__ import annotations

from pathlib import Path

from mlic.data.records import SplitIndex
from mlic.errors import DataError

DATASETS = ("coco", "voc", "csv")


def read_split(dataset: str, root: str | Path, split: str, train_split: str = "") -> SplitIndex:
    """The labels of one split: `root` holds `annotations/` (COCO), `VOC2007/` (VOC) or
    `<split>.csv` (csv, whose classes come from `train_split` unless classes.txt lists them)."""
    if split in ("", ".", "..") or any(c in split for c in "/\\\x00"):
        raise DataError(f"split {split[:60]!r} is not a split name (no '/', '\\', '.' or '..')")
    if dataset == "coco":
        from mlic.data.coco import read_coco

        return read_coco(root, split)
    if dataset == "voc":
        from mlic.data.voc import read_voc

        return read_voc(root, split)
    if dataset == "csv":
        from mlic.data.csv_dataset import read_csv_split

        return read_csv_split(root, split, train_split=train_split or "train")
    raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
