"""`build_dataset`: a configuration's split, as a torch Dataset with its transforms."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mlic.config import DataConfig
from mlic.data.base import MultiLabelDataset
from mlic.data.embedded import ensure_embedded
from mlic.data.splits import read_split
from mlic.data.transforms import build_transforms


def build_dataset(
    cfg: DataConfig,
    which: Literal["train", "val"],
    *,
    augment: bool | None = None,
    skip_unreadable: bool | None = None,
    uint8: bool = False,
) -> MultiLabelDataset:
    """The `which` split of `cfg` (generating the embedded dataset on first use).

    augment: train-time transforms (RandAugment); default: only for the training split.
    skip_unreadable: an undecodable image becomes a counted skip (True) or a DataError naming
    the file (False); default: skip in training, fail in evaluation (never a silent change in
    the reported numbers).
    uint8: items stay uint8 for the device to finish (`mlic.data.transforms.to_model_input`);
    the engine asks for this, notebooks and plots get float tensors by default.
    """
    if cfg.is_embedded:
        ensure_embedded(Path(cfg.embedded_root))
    index = read_split(
        cfg.dataset, cfg.resolved_root(), cfg.split(which), train_split=cfg.split("train")
    )
    limit = cfg.max_train_images if which == "train" else cfg.max_val_images
    index = index.head(limit)
    train = augment if augment is not None else which == "train"
    return MultiLabelDataset(
        index,
        build_transforms(cfg, train=train, uint8=uint8),
        skip_unreadable=which == "train" if skip_unreadable is None else skip_unreadable,
        # A cached image would freeze RandAugment's random draw: only deterministic pipelines.
        cache=cfg.cache_images and not (train and cfg.randaugment),
    )
