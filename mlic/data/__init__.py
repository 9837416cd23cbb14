"""The data layer: the embedded dataset generator, the COCO/VOC loaders, transforms, CutMix.

Names are imported lazily (PEP 562), so that `mlic data embedded` and `mlic data stats` do
not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "MultiLabelDataset": "mlic.data.base",
    "collate_skip_unreadable": "mlic.data.base",
    "build_dataset": "mlic.data.build",
    "read_split": "mlic.data.splits",
    "read_coco": "mlic.data.coco",
    "read_voc": "mlic.data.voc",
    "VOC_CLASSES": "mlic.data.voc",
    "ensure_embedded": "mlic.data.embedded",
    "generate_embedded": "mlic.data.embedded",
    "open_rgb": "mlic.data.images",
    "cutmix": "mlic.data.mixing",
    "ObjectTable": "mlic.data.records",
    "SplitIndex": "mlic.data.records",
    "dataset_stats": "mlic.data.stats",
    "build_transforms": "mlic.data.transforms",
    "make_transforms": "mlic.data.transforms",
    "to_model_input": "mlic.data.transforms",
}

__all__ = [
    "MultiLabelDataset",
    "ObjectTable",
    "SplitIndex",
    "VOC_CLASSES",
    "build_dataset",
    "build_transforms",
    "collate_skip_unreadable",
    "cutmix",
    "dataset_stats",
    "ensure_embedded",
    "generate_embedded",
    "make_transforms",
    "open_rgb",
    "read_coco",
    "read_split",
    "read_voc",
    "to_model_input",
]

if TYPE_CHECKING:
    from mlic.data.base import MultiLabelDataset, collate_skip_unreadable
    from mlic.data.build import build_dataset
    from mlic.data.coco import read_coco
    from mlic.data.embedded import ensure_embedded, generate_embedded
    from mlic.data.images import open_rgb
    from mlic.data.mixing import cutmix
    from mlic.data.records import ObjectTable, SplitIndex
    from mlic.data.splits import read_split
    from mlic.data.stats import dataset_stats
    from mlic.data.transforms import build_transforms, make_transforms, to_model_input
    from mlic.data.voc import VOC_CLASSES, read_voc


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlic.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
