"""Images/s of evaluation: the paper's model in eval mode, no grad, autocast as the engine does.

What `mlic evaluate` spends on the network: `mlic.inference.predict_dataset`'s loop body - the
model under the engine's autocast, then sigmoid and the copy of the scores to the host - on a
fixed synthetic batch already on the device, at each image size asked for:

    python benchmarks/evaluate_speed.py --image-sizes 448 576           # the paper's sizes
    python benchmarks/evaluate_speed.py --preset embedded               # CPU-sized

Precision and memory format follow the engine (`make_runtime`): bf16 autocast and
channels_last on CUDA, fp32 NCHW on the CPU, unless --precision / --channels-last say
otherwise. The BatchFormerV2 branch is off in eval mode, so the dual and transformer heads
cost the same here. FLOPs of one forward pass are counted once per size as in train_step.py.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import (  # noqa: E402  (a sibling script, not a package)
    H100_BF16_PEAK_TFLOPS,
    add_common_arguments,
    count_forward_flops,
    device_name,
    parse_common,
    peak_memory,
    release,
    reset_peak_memory,
    resolve_compile_mode,
    synchronize,
    synthetic_batch,
)

from mlic.config import Config, load_config  # noqa: E402
from mlic.errors import MlicError  # noqa: E402
from mlic.models import build_model_from_config  # noqa: E402
from mlic.runtime import Runtime, make_runtime  # noqa: E402

COLUMNS = (
    "configuration",
    "image_size",
    "batch_size",
    "device",
    "status",
    "images_per_s",
    "tflops",
    "pct_of_peak",
    "peak_memory_gib",
    "peak_memory_kind",
    "first_batch_seconds",
    "gflop_per_image",
    "warmup",
    "steps",
    "seconds",
)


@dataclass
class EvalResult:
    configuration: str
    image_size: int
    batch_size: int
    device: str
    status: str = "ok"
    images_per_s: float = math.nan
    tflops: float = math.nan
    pct_of_peak: float = math.nan
    peak_memory_gib: float = math.nan
    peak_memory_kind: str = ""
    first_batch_seconds: float = math.nan  # includes compilation when compiled
    gflop_per_image: float = math.nan
    warmup: int = 0
    steps: int = 0
    seconds: float = math.nan


def describe(rt: Runtime, compile_mode: str) -> str:
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[rt.amp_dtype]
    layout = "channels_last" if rt.channels_last else "NCHW"
    graph = "eager" if compile_mode == "none" else f"compile {compile_mode}"
    return f"eval: {precision}, {layout}, {graph}"


@torch.no_grad()
def time_eval(
    cfg: Config, rt: Runtime, *, batch_size: int, warmup: int, steps: int, compile_mode: str
) -> tuple[float, float, float]:
    """(timed seconds, peak memory GiB, seconds of the first batch) of `warmup + steps` batches
    through the eval loop body."""
    num_classes = 80 if cfg.data.dataset == "coco" else 20
    images, _ = synthetic_batch(batch_size, cfg.data.image_size, num_classes, rt.device)
    reset_peak_memory(rt.device)
    torch.manual_seed(0)
    with rt.device:
        model = build_model_from_config(cfg.model, num_classes)
    model.eval()
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    net = model if compile_mode == "none" else torch.compile(model, mode=compile_mode)

    def batch() -> torch.Tensor:
        with rt.autocast():
            logits = net(images)  # [B, K]
        # As mlic.inference.predict_dataset: the scores go to the host.
        return torch.sigmoid(logits.float()).cpu()

    t0 = time.perf_counter()
    batch()  # the first batch: compilation (when compiled), cuDNN autotuning
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        batch()
    synchronize(rt.device)
    start = time.perf_counter()
    for _ in range(steps):
        batch()
    synchronize(rt.device)
    seconds = time.perf_counter() - start
    return seconds, peak_memory(rt.device)[0], first


def measure(cfg: Config, rt: Runtime, args: argparse.Namespace, peak: float | None) -> EvalResult:
    batch_size = args.batch_size or cfg.train.eval_batch_size
    result = EvalResult(
        configuration=describe(rt, args.compile),
        image_size=cfg.data.image_size,
        batch_size=batch_size,
        device=device_name(rt.device),
        peak_memory_kind=peak_memory(rt.device)[1],
        warmup=args.warmup,
        steps=args.steps,
    )
    num_classes = 80 if cfg.data.dataset == "coco" else 20
    flops = count_forward_flops(cfg, num_classes, batch_size)
    result.gflop_per_image = flops / batch_size / 1e9
    error = None
    try:
        seconds, memory, first = time_eval(
            cfg,
            rt,
            batch_size=batch_size,
            warmup=args.warmup,
            steps=args.steps,
            compile_mode=args.compile,
        )
    except torch.OutOfMemoryError:
        error = "OOM"
    except RuntimeError as exc:
        error = "failed: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
    release(rt.device, compiled=args.compile != "none")
    if error:
        result.status = error
        return result
    result.seconds, result.peak_memory_gib = seconds, memory
    result.first_batch_seconds = first
    result.images_per_s = batch_size * args.steps / seconds
    result.tflops = flops * args.steps / seconds / 1e12
    if peak:
        result.pct_of_peak = 100.0 * result.tflops / peak
    return result


def _fmt(value: float, spec: str, suffix: str = "") -> str:
    return "n/a" if not math.isfinite(value) else f"{value:{spec}}{suffix}"


def markdown_table(results: Sequence[EvalResult]) -> str:
    lines = [
        "| configuration | image size | batch | device | images/s | TFLOP/s | % of peak "
        "| peak memory | first batch |",
        "|" + "---|" * 9,
    ]
    for r in results:
        if r.status == "ok":
            memory = _fmt(r.peak_memory_gib, ".2f", " GiB")
            if r.peak_memory_kind == "process RSS":
                memory += " (RSS)"
            cells = [
                _fmt(r.images_per_s, ".1f"),
                _fmt(r.tflops, ".3f" if r.tflops < 10 else ".1f"),
                _fmt(r.pct_of_peak, ".1f", "%"),
                memory,
                _fmt(r.first_batch_seconds, ".1f", " s"),
            ]
        else:
            cells = [r.status, "", "", "", ""]
        lines.append(
            f"| {r.configuration} | {r.image_size} | {r.batch_size} | {r.device} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def write_outputs(out: Path, header: str, results: Sequence[EvalResult]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluate_speed.md").write_text(header + "\n\n" + markdown_table(results) + "\n")
    with (out / "evaluate_speed.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in results:
            row = {k: getattr(r, k) for k in COLUMNS}
            for k, v in row.items():
                if isinstance(v, float):
                    row[k] = "" if not math.isfinite(v) else f"{v:.6g}"
            writer.writerow(row)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(
        p, unit="batches", steps=20, warmup=5, out_files="evaluate_speed.md / evaluate_speed.csv"
    )
    p.add_argument(
        "--image-sizes", "--image-size", nargs="+", type=int, default=None,
        help="default: the preset's data.image_size",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, help="default: the preset's train.eval_batch_size")
    return parse_common(p, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = [*args.set, "model.pretrained=false", "model.pretrained_file="]
    overrides += [f"train.device={args.device}", f"train.precision={args.precision}"]
    try:
        base = load_config(args.preset, overrides)
        sizes = args.image_sizes or [base.data.image_size]
        configs = [load_config(args.preset, [*overrides, f"data.image_size={s}"]) for s in sizes]
        runtimes = [make_runtime(c) for c in configs]  # the engine's device, autocast, layout
    except MlicError as exc:
        print(f"evaluate_speed: error: {exc}", file=sys.stderr)
        return 2
    if args.channels_last is not None:
        runtimes = [
            Runtime(rt.device, rt.dist, rt.amp_dtype, args.channels_last) for rt in runtimes
        ]
    device = runtimes[0].device
    args.compile = resolve_compile_mode(args.compile, device)  # auto: as the engine
    peak = args.peak_tflops or (H100_BF16_PEAK_TFLOPS if device.type == "cuda" else None)
    m = base.model
    header = "\n".join(
        [
            f"# Evaluation: preset {args.preset}, {m.backbone} + {m.head} head (eval mode: "
            f"no BatchFormerV2 stream), d_model {m.d_model}",
            "",
            f"- device: {device_name(device)}; torch {torch.__version__}; {args.warmup} warm-up "
            f"+ {args.steps} timed batches of one fixed synthetic batch; no grad",
            "- TFLOP/s: matmul + convolution FLOPs of the forward pass (FlopCounterMode, math "
            "attention) / time" + (f"; % of peak against {peak:g} TFLOP/s" if peak else ""),
        ]
    )
    print(header, flush=True)
    results = []
    for cfg, rt in zip(configs, runtimes, strict=True):
        r = measure(cfg, rt, args, peak)
        results.append(r)
        print(
            f"  {r.configuration} at {r.image_size} px (batch {r.batch_size}): {r.status}, "
            f"{_fmt(r.images_per_s, '.1f')} images/s",
            flush=True,
        )
        if args.out:
            write_outputs(args.out, header, results)
    print()
    print(markdown_table(results))
    failed = [r for r in results if r.status.startswith("failed")]
    for r in failed:
        print(f"evaluate_speed: error: {r.image_size} px: {r.status}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
