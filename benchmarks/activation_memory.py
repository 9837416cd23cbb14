"""How much activation checkpointing saves, counted without running the model.

Builds a preset's model on the meta device (no memory, no compute) in bf16 and counts the
bytes of the tensors autograd keeps for the backward pass of one training forward, with and
without `train.activation_checkpointing` (for the checkpointed units, their inputs, which the
checkpoint keeps outside the saved-tensor hooks). Views of one tensor are counted once per view,
so the absolute numbers overcount; the RATIO is what the memory presets use, applied to the
per-image memory measured on the GPU:

    python benchmarks/activation_memory.py                      # paper-coco-448, batch 4
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from mlic.config import load_config
from mlic.models import build_model_from_config

MODES = ("none", "backbone", "head", "all")


def saved_bytes_per_image(preset: str, mode: str, batch: int) -> float:
    cfg = load_config(preset, ["model.pretrained=false"])
    size = cfg.data.image_size
    with torch.device("meta"):
        model = build_model_from_config(cfg.model, 80).train().to(torch.bfloat16)
        images = torch.empty(batch, 3, size, size, dtype=torch.bfloat16)
    model.set_grad_checkpointing(backbone=mode in ("backbone", "all"), head=mode in ("head", "all"))
    saved: dict[int, int] = {}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[id(t)] = t.numel() * t.element_size()
        return t

    def keep_inputs(_module, args) -> None:
        for a in args:
            if torch.is_tensor(a):
                kept[id(a)] = a.numel() * a.element_size()

    hooks = []
    if mode in ("backbone", "all"):  # timm checkpoints every residual block
        stages = (getattr(model.backbone, f"layer{i}") for i in range(1, 5))
        hooks += [block.register_forward_pre_hook(keep_inputs) for s in stages for block in s]
    if mode in ("head", "all") and hasattr(model.head, "encoder"):
        units = [*model.head.encoder.layers, *model.head.decoder.layers]
        hooks += [unit.register_forward_pre_hook(keep_inputs) for unit in units]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images)
    for h in hooks:
        h.remove()
    total = sum(saved.values()) + sum(v for k, v in kept.items() if k not in saved)
    return total / batch


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper-coco-448")
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args(argv)
    base = saved_bytes_per_image(args.preset, "none", args.batch_size)
    print(f"# Saved activations per image: preset {args.preset}, batch {args.batch_size}, bf16, "
          "meta device (views counted per view: use the ratio)")  # fmt: skip
    print(
        "| activation_checkpointing | GiB per image (overcount) | ratio to none |\n|---|---:|---:|"
    )
    for mode in MODES:
        value = (
            base if mode == "none" else saved_bytes_per_image(args.preset, mode, args.batch_size)
        )
        print(f"| {mode} | {value / 2**30:.3f} | {value / base:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
