"""Parameter counts (and optionally FLOPs) of the paper's configurations, as a Markdown table.

    python benchmarks/param_count.py            # parameters only, about 5 s on a CPU
    python benchmarks/param_count.py --flops    # + forward FLOPs per image at --size (448)

Models are built on the meta device (no memory, no weights, nothing downloaded), so both
numbers come from shapes alone. FLOPs are counted by torch.utils.flop_counter.FlopCounterMode,
which counts 2 FLOPs per multiply-accumulate; "GMAC" columns are half of "GFLOP" ones.
"deployed" excludes the training-only BatchFormerV2 layer of the "separate" variant; the
dual head's training-time cost per image (both streams) is in the "train" column.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from mlic.models import build_model

# (label, backbone, head, batchformer): the gap baselines, the Transformer heads, and the dual
# head with both readings of the BatchFormerV2 branch (separate: the official layer, the presets'
# default; shared: encoder layer 0's weights reused). Other heads have no branch: the default.
CONFIGS = [
    ("ResNet-101 + GAP", "resnet101", "gap", "separate"),
    ("ResNeSt-101e + GAP", "resnest101e", "gap", "separate"),
    ("ResNet-101 + Transformer", "resnet101", "transformer", "separate"),
    ("ResNeSt-101e + Transformer", "resnest101e", "transformer", "separate"),
    ("ResNet-101 + dual (shared)", "resnet101", "dual", "shared"),
    ("ResNeSt-101e + dual (shared)", "resnest101e", "dual", "shared"),
    ("ResNeSt-101e + dual (separate)", "resnest101e", "dual", "separate"),
]


def forward_gflops(
    model: torch.nn.Module, size: int, batch: int, training: bool
) -> dict[str, float]:
    """Forward GFLOPs per input image: total and head, on the meta device."""
    model.train(training)
    with torch.device("meta"):
        images = torch.empty(batch, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter:  # not under no_grad: FlopCounterMode's module tracker needs autograd
        model(images)
    counts = counter.get_flop_counts()
    head = sum(counts.get("MultiLabelClassifier.head", {}).values())
    return {"total": counter.get_total_flops() / batch / 1e9, "head": head / batch / 1e9}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flops", action="store_true", help="also count forward FLOPs")
    parser.add_argument("--size", type=int, default=448, help="input size in pixels (448)")
    parser.add_argument("--num-classes", type=int, default=80, help="classes (80: COCO)")
    args = parser.parse_args(argv)

    header = ["model", "backbone M", "head M", "BatchFormerV2 M", "total M", "deployed M"]
    if args.flops:
        header += [f"GFLOP/img @{args.size}", "head GFLOP/img", "train GFLOP/img"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for label, backbone, head, batchformer in CONFIGS:
        with torch.device("meta"):
            model = build_model(backbone, head, args.num_classes, batchformer=batchformer)
        c = model.parameter_counts()
        row = [label] + [
            f"{c[k] / 1e6:.2f}" for k in ("backbone", "head", "batchformer", "total", "deployed")
        ]
        if args.flops:
            infer = forward_gflops(model, args.size, batch=1, training=False)
            # Two images: the dual head attends across the batch; per-image cost of both streams.
            train = forward_gflops(model, args.size, batch=2, training=True)
            row += [f"{infer['total']:.1f}", f"{infer['head']:.1f}", f"{train['total']:.1f}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
