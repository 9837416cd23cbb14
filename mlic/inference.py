"""A trained network at work: load a run for inference, and score batches and datasets with it.

`load_trained` is the one way a finished run is loaded (by `mlic evaluate`, `predict`,
`calibrate` and `export`, and the walkthrough); `forward` and `predict_dataset` are the one
evaluation path (the loader, the device copy, autocast, the compiled forward) that training's
`evaluate` and those commands share.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm  # plain bars: notebooks turn them off (not a terminal)

from mlic.checkpoint import check_architecture, check_contents, load_checkpoint, load_weights
from mlic.compilation import Compiler
from mlic.config import Config, from_dict, load_config
from mlic.distributed import ShardSampler, gather_by_index
from mlic.errors import MlicError
from mlic.loaders import build_loader, images_to_device
from mlic.models import build_model_from_config
from mlic.runtime import Runtime, make_runtime

# --------------------------------------------------------------------------- batches


def forward(model: nn.Module, images: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """The model's logits under the runtime's autocast (bf16 on CUDA, none on the CPU)."""
    with rt.autocast():
        return model(images)


@torch.no_grad()
def predict_dataset(
    model: nn.Module, dataset: Dataset, cfg: Config, rt: Runtime, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid scores, targets and ignore masks for every image of `dataset`, in dataset order,
    each image counted exactly once even under DDP."""
    model.eval()
    compiler = rt.compiler or Compiler(False)
    net = compiler.wrap(model)  # compiled once per model and run, eager after a failure
    sampler = ShardSampler(len(dataset), rt.dist.rank, rt.dist.world_size)
    loader = build_loader(dataset, cfg.train.eval_batch_size, sampler, cfg, rt, train=False)
    scores, targets, ignores = [], [], []
    for images, target, ignore, num_skipped in tqdm(
        loader, desc="evaluate", disable=not progress, leave=False, dynamic_ncols=True
    ):
        if num_skipped:
            raise MlicError("an image of the evaluation split could not be decoded")
        images = images_to_device(images, rt, cfg.data)
        logits = compiler.run(net, forward, images, rt)
        scores.append(torch.sigmoid(logits.float()))  # stays on the device: no sync per batch
        targets.append(target)
        ignores.append(ignore)
    indices = torch.tensor(sampler.indices, dtype=torch.long)
    num_classes = len(dataset.class_names)
    pieces = [
        torch.cat(x).cpu() if x else torch.empty(0, num_classes) for x in (scores, targets, ignores)
    ]
    return tuple(gather_by_index(indices, pieces, rt.dist))


# --------------------------------------------------------------------------- a trained run


@dataclass
class Trained:
    """A run's trained network, ready for inference: the model in eval mode on its device (the
    deployed network: the BatchFormerV2 branch is skipped in eval mode), the run's configuration
    (with any data overrides) and the class names the checkpoint was trained with."""

    model: nn.Module
    cfg: Config
    rt: Runtime
    class_names: list[str]
    checkpoint: Path
    run_dir: Path | None  # None for a checkpoint file outside a run directory
    weights: str  # "model" or "ema"
    epoch: int | None


def checkpoint_of(path: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run directory or None) for a run directory (best.pt, else last.pt) or
    a checkpoint file (its run directory when it lies in `<run>/checkpoints/`)."""
    path = Path(path)
    if path.is_dir():
        ckpt_path = path / "checkpoints" / "best.pt"
        if not ckpt_path.exists():
            ckpt_path = path / "checkpoints" / "last.pt"
        return ckpt_path, path
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    if run_dir is not None and not (run_dir / "config.yaml").is_file():
        run_dir = None
    return path, run_dir


def load_trained(
    path: str | Path,
    *,
    device: str = "auto",
    data: dict[str, Any] | None = None,
    rt: Runtime | None = None,
) -> Trained:
    """Load a run directory's best checkpoint (or a checkpoint file) for inference.

    Works for a checkpoint written on another machine (loaded on the CPU first); a checkpoint
    whose architecture differs from its run's config.yaml is refused. `data`: overrides of the
    run's `data` section (e.g. another split or root); `rt`: run there instead of on `device`.
    """
    path = Path(path)
    ckpt_path, run_dir = checkpoint_of(path)
    state = load_checkpoint(ckpt_path)
    check_contents(ckpt_path, state)  # config sections, class names, weights: all present
    raw = copy.deepcopy(state["config"])
    raw["train"]["device"] = device
    raw["data"].update(data or {})
    cfg = from_dict(raw, source=str(ckpt_path))
    # A run directory's config.yaml says which architecture the checkpoint must hold.
    model_cfg = cfg.model
    if path.is_dir() and (path / "config.yaml").is_file():
        model_cfg = load_config(path=path / "config.yaml").model
    rt = rt or make_runtime(cfg)
    # The weights come from the checkpoint: never fetch ImageNet weights to throw them away.
    model_cfg = replace(model_cfg, pretrained=False, pretrained_file="")
    model = build_model_from_config(model_cfg, num_classes=len(state["class_names"]))
    check_architecture(ckpt_path, state.get("arch", {}), dict(model.arch))
    load_weights(ckpt_path, model, state["model"])
    model.to(rt.device).eval()
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    epoch = state.get("epoch")
    return Trained(
        model=model,
        cfg=cfg,
        rt=rt,
        class_names=[str(n) for n in state["class_names"]],
        checkpoint=ckpt_path,
        run_dir=run_dir,
        weights=str(state.get("weights", "model")),
        epoch=int(epoch) if isinstance(epoch, int) else None,
    )
