"""Milliseconds per EMA update of a preset's model: Query2Label's per-tensor loop, timm's
ModelEmaV3 (foreach lerp over state_dicts rebuilt every update) and the engine's ForeachEma
(mlic/ema.py: the same lerp on tensor lists collected once, one foreach copy for the counters).

    python benchmarks/ema_update.py --preset paper-coco-448 --device cuda
    OMP_NUM_THREADS=1 python benchmarks/ema_update.py --preset embedded --device cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from timm.utils import ModelEmaV3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import Q2LStyleEma, device_name, synchronize  # noqa: E402

from mlic.config import load_config  # noqa: E402
from mlic.ema import ForeachEma  # noqa: E402
from mlic.models import build_model_from_config  # noqa: E402
from mlic.runtime import resolve_device  # noqa: E402


def time_updates(ema, model: torch.nn.Module, device: torch.device, n: int) -> float:
    for _ in range(3):
        ema.update(model)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        ema.update(model)
    synchronize(device)
    return (time.perf_counter() - start) / n * 1e3


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper-coco-448")
    p.add_argument("--device", default="auto")
    p.add_argument("--updates", type=int, default=30)
    args = p.parse_args(argv)
    cfg = load_config(args.preset, ["model.pretrained=false"])
    device = resolve_device(args.device)
    with device:
        model = build_model_from_config(cfg.model, 80).train()
    decay = cfg.train.ema_decay
    tensors = len(model.state_dict())
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"# EMA update: preset {args.preset} ({params:.1f} M parameters, {tensors} state tensors)"
          f", {device_name(device)}, torch {torch.__version__}, {args.updates} updates each")  # fmt: skip
    print("| EMA | ms per update |\n|---|---:|")
    for label, make in (
        ("Query2Label ModelEma (per tensor)", lambda: Q2LStyleEma(model, decay)),
        ("timm ModelEmaV3 (foreach, state_dicts each update)", lambda: ModelEmaV3(model, decay=decay)),
        ("mlic ForeachEma (foreach, cached lists)", lambda: ForeachEma(model, decay)),
    ):  # fmt: skip
        ema = make()
        print(f"| {label} | {time_updates(ema, model, device, args.updates):.2f} |", flush=True)
        del ema
    return 0


if __name__ == "__main__":
    sys.exit(main())
