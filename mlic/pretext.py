"""Pretrained backbones for the embedded plan: the stand-in for ImageNet weights.

The paper fine-tunes backbones pretrained on ImageNet. The embedded plan has neither ImageNet
nor a network, and trained from scratch its miniature learned the shapes (half of what a class
is) only after about 10 epochs, far past its time budget (docs/deviations.md). So each
backbone of the embedded family is pretrained once, on the embedded dataset's pretext tree
(one object of any class per image: `mlic.data.embedded`), with the GAP head, and every run of
the plan loads it through `model.pretrained_file`. As with ImageNet, the pretraining images
are not the dataset's (no scenes, one object each), and the seeds of a setting share one
pretrained backbone.

The weights are the backbone part of the pretext run's best checkpoint (model or EMA, the one
the run chose), written next to it as `checkpoints/backbone.pt`: like the checkpoints, the
file is not committed; `mlic reproduce` trains the pretext run again when a run that needs the
file is to be trained and the file is missing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mlic.errors import CheckpointError
from mlic.runrecord import atomic_write_bytes

EPOCHS = 3  # of the pretext tree's 12,000 training images (36,000 images seen)
PREFIX = "pretext-"
BACKBONE_PREFIX = "backbone."


def run_name(backbone_key: str) -> str:
    """The pretext run of a backbone of the plan ("resnet" / "resnest")."""
    return f"{PREFIX}{backbone_key}"


def weights_path(run_dir: str | Path) -> Path:
    """Where the pretext run's backbone weights are written (and read by the plan's runs)."""
    return Path(run_dir) / "checkpoints" / "backbone.pt"


def overrides(backbone: str, image_size: int, embedded_root: str) -> dict[str, Any]:
    """The pretext run on top of the embedded preset: the pretext tree, the GAP head."""
    return {
        "data.dataset": "csv",
        "data.root": f"{embedded_root.rstrip('/')}/pretext",
        "data.image_size": image_size,
        "model.backbone": backbone,
        "model.head": "gap",
        "train.epochs": EPOCHS,
    }


def write_backbone_weights(run_dir: str | Path) -> Path:
    """The backbone's tensors of the run's best checkpoint, as a timm state_dict file that
    `model.pretrained_file` loads strictly."""
    # torch (and the checkpoint reader, torch too) here, not at the top: the plan and the
    # torch-free report import this module.
    import torch

    from mlic.checkpoint import load_checkpoint

    best = Path(run_dir) / "checkpoints" / "best.pt"
    if not best.is_file():
        raise CheckpointError(f"{best}: the pretext run left no best checkpoint")
    state = load_checkpoint(best)["model"]
    backbone = {
        key[len(BACKBONE_PREFIX) :]: value
        for key, value in state.items()
        if key.startswith(BACKBONE_PREFIX)
    }
    if not backbone:
        raise CheckpointError(f"{best}: holds no backbone.* tensors")
    buffer = io.BytesIO()  # a plain state_dict (timm's reader), not an mlic checkpoint
    torch.save(backbone, buffer)
    out = weights_path(run_dir)
    atomic_write_bytes(out, buffer.getvalue())  # never a torn file under the name runs load
    return out
