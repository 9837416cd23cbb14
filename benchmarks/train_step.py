"""Images/s of the training step, against a Query2Label-style loop and the GPU's peak.

Builds a preset's model (default `paper-coco-448`, random weights), feeds ONE fixed synthetic
batch that already sits on the device (images in [0, 1], multi-hot targets with ~3 positives
of 80) and times full training steps: forward, ASL on both streams, backward, AdamW, EMA.
Each optimisation has its own flag, so its share can be measured:

    python benchmarks/train_step.py                              # CUDA defaults: + compile
    python benchmarks/train_step.py --precision fp16 --no-channels-last --compile default
    python benchmarks/train_step.py --matrix --out results/bench  # every variant, one table
    python benchmarks/train_step.py --preset embedded --matrix    # CPU-sized
    python benchmarks/train_step.py --row reference --row compile=default,ckpt=all \
        --row preset=paper-coco-448-8gb,card=8,compile=none --profile --out results/bench

Every run also times the *reference*: the same architecture trained the way Query2Label's
`main_mlc.py` does (eager, fp16 autocast around model and loss, GradScaler, NCHW, AdamW with
PyTorch's default implementation and one parameter group, `loss.item()` and
`max_memory_allocated()` every step, its `ModelEma` that copies the state_dict tensor by
tensor). The ratio of each configuration to it is measured side by side in the same process.

FLOPs per training step are counted once per (head, batch size) with
`torch.utils.flop_counter.FlopCounterMode` on a copy of the eager model built on the meta
device (no memory, no time), attention through the math path (`SDPBackend.MATH`), and a
corrected formula for the backward of grouped convolutions (see `conv_backward_flop`).
Only matrix products and convolutions count (norms, activations and the optimiser do not):
TFLOP/s is "useful" tensor-core work, comparable with a matmul peak.

The loss must fall over the steps (the batch is fixed, so the model memorises it); on a run of
at least `MIN_STEPS_FOR_LOSS_CHECK` steps the script exits 1 if it does not.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import gc
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, get_args

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mlic.compilation import resolve_compile
from mlic.config import Config, HeadName, ModelConfig, load_config
from mlic.distributed import DistInfo
from mlic.engine import training_step
from mlic.errors import MlicError
from mlic.losses import AsymmetricLoss
from mlic.models import build_model_from_config
from mlic.optim import build_ema, param_groups
from mlic.runtime import Runtime, make_runtime

# An H100's dense bf16 matrix-product rate as measured on this workplace's device (8192^3
# bf16 matmul, KINDS.md: 769-798 TFLOP/s). Only used for the "% of peak" column on CUDA.
H100_BF16_PEAK_TFLOPS = 790.0
MIN_STEPS_FOR_LOSS_CHECK = 10  # warm-up + timed steps; shorter runs only print the loss
LOSS_WINDOW = 3  # steps averaged at each end of the loss curve
POSITIVES_PER_IMAGE = 3.0  # COCO has 2.9 labels per image on average
COMPILE_MODES = ("none", "default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
SDPA_BACKENDS = {
    "auto": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
CSV_COLUMNS = (
    "configuration",
    "reference",
    "precision",
    "channels_last",
    "compile",
    "fused_adamw",
    "head",
    "batch_size",
    "accumulation_steps",
    "checkpointing",
    "memory_limit_gib",
    "sdpa_backend",
    "image_size",
    "device",
    "status",
    "images_per_s",
    "tflops",
    "pct_of_peak",
    "peak_memory_gib",
    "peak_memory_kind",
    "peak_reserved_gib",
    "first_step_seconds",
    "ratio_to_reference",
    "loss_first",
    "loss_last",
    "loss_fell",
    "warmup",
    "steps",
    "seconds",
    "gflop_per_image",
)


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class StepConfig:
    """One way of running the training step; `reference=True` is the Query2Label-style loop."""

    precision: str  # fp32 | bf16 | fp16 (the reference: fp16, fp32 on the CPU)
    channels_last: bool
    compile: str  # one of COMPILE_MODES
    fused_adamw: bool  # False: PyTorch's default AdamW (foreach on CUDA, for-loop on the CPU)
    head: str  # dual | transformer | gap
    batch_size: int
    sdpa_backend: str = "auto"
    reference: bool = False
    accumulation_steps: int = 1  # micro-batches per optimizer step (train.accumulation_steps)
    checkpointing: str = "none"  # train.activation_checkpointing: none | backbone | head | all
    memory_limit_gib: float = 0.0  # a card of this many GiB (allocator capped below it); 0: none

    def label(self, device: torch.device, base_head: str) -> str:
        default_adamw = "foreach" if device.type == "cuda" else "for-loop"
        if self.reference:
            amp = "fp16 autocast + GradScaler" if device.type == "cuda" else "fp32: no fp16 on CPU"
            return f"reference: Q2L loop ({amp}; NCHW, {default_adamw} AdamW, per-tensor EMA)"
        parts = [
            self.precision,
            "channels_last" if self.channels_last else "NCHW",
            "fused AdamW" if self.fused_adamw else f"{default_adamw} AdamW",
            "eager" if self.compile == "none" else f"compile {self.compile}",
        ]
        if self.head != base_head:
            parts.append(f"{self.head} head" + (" (no BF)" if self.head == "transformer" else ""))
        if self.sdpa_backend != "auto":
            parts.append(f"SDPA {self.sdpa_backend}")
        if self.accumulation_steps > 1:
            micro = self.batch_size // self.accumulation_steps
            parts.append(f"{self.accumulation_steps} micro-batches of {micro}")
        if self.checkpointing != "none":
            parts.append(f"checkpointing {self.checkpointing}")
        if self.memory_limit_gib:
            parts.append(
                f"{self.memory_limit_gib:g} GiB card (limit {card_limit_gib(self.memory_limit_gib):g} GiB)"
            )
        return ", ".join(parts)


CONTEXT_RESERVE_GIB = 1.0  # what a card loses to the CUDA context, cuBLAS/cuDNN and the display


def card_limit_gib(card_gib: float) -> float:
    """The allocator's cap that stands in for a card of `card_gib` GiB: its memory less what
    the CUDA context and libraries take outside PyTorch's allocator."""
    return card_gib - CONTEXT_RESERVE_GIB


@dataclass
class Result:
    config: StepConfig
    label: str
    device: str
    image_size: int
    status: str = "ok"  # ok | OOM | failed: ... | skipped: ...
    images_per_s: float = math.nan
    tflops: float = math.nan
    pct_of_peak: float = math.nan
    peak_memory_gib: float = math.nan
    peak_memory_kind: str = ""
    peak_reserved_gib: float = math.nan  # what the caching allocator held (CUDA)
    first_step_seconds: float = math.nan  # the first warm-up step: compilation, cuDNN autotuning
    ratio_to_reference: float = math.nan
    losses: list[float] | None = None
    warmup: int = 0
    steps: int = 0
    seconds: float = math.nan
    gflop_per_image: float = math.nan

    @property
    def _window(self) -> int:
        # Up to LOSS_WINDOW steps at each end, never overlapping on a short run.
        return max(1, min(LOSS_WINDOW, len(self.losses or []) // 2))

    @property
    def loss_first(self) -> float:
        return _mean(self.losses[: self._window]) if self.losses else math.nan

    @property
    def loss_last(self) -> float:
        return _mean(self.losses[-self._window :]) if self.losses else math.nan

    @property
    def loss_fell(self) -> bool:
        return bool(self.losses) and self.loss_last < self.loss_first

    @property
    def loss_checked(self) -> bool:
        return self.status == "ok" and self.warmup + self.steps >= MIN_STEPS_FOR_LOSS_CHECK


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def matrix_configs(
    device: torch.device,
    base: StepConfig,
    *,
    batch_sizes: Sequence[int],
    compile_modes: Sequence[str],
    sdpa_backends: Sequence[str],
) -> list[StepConfig]:
    """The reference, then one optimisation added at a time; compile (slow to build) last."""
    cuda = device.type == "cuda"
    ref = replace(base, reference=True, precision="fp16", channels_last=False, compile="none")
    ref = replace(ref, fused_adamw=False, sdpa_backend="auto")
    if cuda:
        eager = replace(base, precision="bf16", compile="none", sdpa_backend="auto")
        plain = replace(eager, channels_last=False, fused_adamw=False)
        steps = [plain, replace(plain, channels_last=True)]
        best = replace(eager, channels_last=True, fused_adamw=True)  # the engine's CUDA default
        steps.append(best)
    else:
        # The engine's CPU path: fp32, NCHW (make_runtime turns channels_last off on the CPU).
        best = replace(base, precision="fp32", channels_last=False, compile="none")
        best = replace(best, fused_adamw=False, sdpa_backend="auto")
        steps = [best, replace(best, channels_last=True), replace(best, fused_adamw=True)]
    configs = [ref, *steps]
    if base.head == "dual":
        configs.append(replace(best, head="transformer"))
    configs += [replace(best, batch_size=b) for b in batch_sizes if b != best.batch_size]
    configs += [replace(best, sdpa_backend=s) for s in sdpa_backends if s != "auto"]
    configs += [replace(best, compile=m) for m in compile_modes if m != "none"]
    return configs


# --------------------------------------------------------------------------- FLOPs


def conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """FLOPs of `aten.convolution_backward`: the forward's count once per gradient asked for.

    grad_input and grad_weight each take as many multiply-adds as the forward convolution.
    torch's own formula (torch 2.14 and earlier) counts grad_weight as a convolution over all
    input channels and so overcounts grouped convolutions by the number of groups: ResNeSt-101e's
    radix-2 split-attention convolutions add 24% to its backward that way.
    """
    spatial = (x_shape if transposed else grad_out_shape)[2:]
    forward = 2 * grad_out_shape[0] * math.prod(spatial) * math.prod(w_shape)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop}
    )


def count_train_flops(cfg: Config, num_classes: int, batch_size: int) -> int:
    """Matmul + convolution FLOPs of one training step (forward, loss, backward) of the eager
    model at `batch_size`, counted on the meta device with attention through the math path."""
    size = cfg.data.image_size
    with torch.device("meta"):
        model = build_model_from_config(cfg.model, num_classes)
        images = torch.empty(batch_size, 3, size, size)
        targets = torch.empty(batch_size, num_classes)
    model.train()
    loss_fn = _loss(cfg)
    with sdpa_kernel(SDPBackend.MATH), flop_counter() as counter:
        logits = model(images)
        streams = logits.shape[0] // batch_size
        loss_fn(logits.float(), targets.repeat(streams, 1)).backward()
    return counter.get_total_flops()


def count_forward_flops(cfg: Config, num_classes: int, batch_size: int) -> int:
    """Matmul + convolution FLOPs of one eval-mode forward pass (meta device, math attention).

    Counted with autograd enabled: FlopCounterMode's module tracker fails under no_grad when a
    module receives a parameter as input (the decoder's class queries)."""
    size = cfg.data.image_size
    with torch.device("meta"):
        model = build_model_from_config(cfg.model, num_classes)
        images = torch.empty(batch_size, 3, size, size)
    model.eval()
    with sdpa_kernel(SDPBackend.MATH), flop_counter() as counter:
        model(images)
    return counter.get_total_flops()


# --------------------------------------------------------------------------- memory, device


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        # Linux: "5" resets the process's peak RSS (VmHWM) to its current RSS.
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, kind): CUDA's peak allocated memory, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "CUDA allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20, "process RSS"
    except OSError:
        pass
    return math.nan, "n/a"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"


def release(device: torch.device, compiled: bool) -> None:
    """Free the last configuration's model, optimiser and graphs before the next one."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def synthetic_batch(
    batch_size: int, image_size: int, num_classes: int, device: torch.device, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Fixed images in [0, 1] (the paper's mean 0 / std 1) and multi-hot targets, ~3 positives."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=g)
    rate = min(POSITIVES_PER_IMAGE / num_classes, 0.5)
    targets = (torch.rand(batch_size, num_classes, generator=g) < rate).float()
    return images.to(device), targets.to(device)


# --------------------------------------------------------------------------- the two loops


class Q2LStyleEma:
    """Query2Label's `ModelEma`: e = d * e + (1 - d) * m over the state_dict, one tensor at a
    time (two temporaries and a copy per tensor) - no foreach, no lerp."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        pairs = zip(self.module.state_dict().values(), model.state_dict().values(), strict=True)
        for ema_v, model_v in pairs:
            ema_v.copy_(self.decay * ema_v + (1.0 - self.decay) * model_v)


def _loss(cfg: Config) -> AsymmetricLoss:
    c = cfg.loss
    return AsymmetricLoss(gamma_neg=c.gamma_neg, gamma_pos=c.gamma_pos, clip=c.clip, eps=c.eps)


def reference_step(
    model: nn.Module, images: Tensor, targets: Tensor, cfg: Config, device: torch.device
) -> Callable[[], float]:
    """Query2Label's `train()` body (main_mlc.py), minus the data loader and the lr schedule."""
    amp = device.type == "cuda"  # Q2L's --amp; CPU autocast has no fast fp16, so fp32 there
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    ema = Q2LStyleEma(model, cfg.train.ema_decay)
    loss_fn = _loss(cfg)

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(images)  # [B, K] or [2B, K] (dual head in training)
            loss = loss_fn(logits, targets.repeat(logits.shape[0] // targets.shape[0], 1))
        value = loss.item()  # Q2L logs loss.item() every step: a host sync per step
        if amp:
            torch.cuda.max_memory_allocated()  # Q2L logs memory every step
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        ema.update(model)
        return value

    return step


def engine_step(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    cfg: Config,
    rt: Runtime,
    sc: StepConfig,
) -> Callable[[], Tensor]:
    """The engine's step (mlic/engine.py, train_one_epoch): autocast around the model only,
    ASL in float32 on both streams, no host sync, the engine's EMA (mlic/ema.py)."""
    groups = param_groups(model, cfg.train.weight_decay)
    fused = True if sc.fused_adamw else None
    optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, fused=fused)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.amp_dtype == torch.float16 else None
    ema = build_ema(model, cfg)
    loss_fn = _loss(cfg)
    train_model: nn.Module = model
    cudagraphs = sc.compile in ("reduce-overhead", "max-autotune")
    if sc.compile != "none":
        train_model = torch.compile(model, mode=sc.compile)

    def step_with(net: Callable, loss: Callable) -> Tensor:
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        # The engine's own step (forward, ASL on both streams, backward, AdamW), then its EMA.
        out = training_step(net, loss, optimizer, images, targets, rt, scaler=scaler,
                            accumulation_steps=sc.accumulation_steps)  # fmt: skip
        ema.update(model)
        return out

    def step() -> Tensor:
        return step_with(train_model, loss_fn)

    # For benchmarks/profile_step.py: the same step with the model and the loss wrapped.
    step.parts = (step_with, train_model, loss_fn, optimizer)
    return step


# --------------------------------------------------------------------------- one configuration


def run_config(
    sc: StepConfig,
    cfg: Config,
    device: torch.device,
    *,
    num_classes: int,
    warmup: int,
    steps: int,
    seed: int = 0,
    after: Callable[..., None] | None = None,
) -> tuple[list[float], float, float, float, float]:
    """Train `warmup + steps` steps; returns (losses, timed seconds, peak memory GiB, peak
    reserved GiB, seconds of the first step). `after(step, model, rt, images)` runs once the
    steps are timed (the profile of this configuration)."""
    cfg = _with_head(cfg, sc.head)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[sc.precision]
    rt = Runtime(device=device, dist=DistInfo(), amp_dtype=amp, channels_last=sc.channels_last)
    images, targets = synthetic_batch(sc.batch_size, cfg.data.image_size, num_classes, device, seed)
    reset_peak_memory(device)
    torch.manual_seed(seed)
    with device:  # initialise the weights where they will live (fast for the paper's 200 M)
        model = build_model_from_config(cfg.model, num_classes)
    model.train()
    ckpt = sc.checkpointing
    model.set_grad_checkpointing(backbone=ckpt in ("backbone", "all"), head=ckpt in ("head", "all"))
    if sc.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if sc.reference:
        step: Callable[[], Any] = reference_step(model, images, targets, cfg, device)
    else:
        step = engine_step(model, images, targets, cfg, rt, sc)
    backend = SDPA_BACKENDS[sc.sdpa_backend]
    losses: list[Any] = []
    first = math.nan
    with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
        for i in range(warmup):
            t0 = time.perf_counter()
            losses.append(step())
            if i == 0:
                synchronize(device)
                first = time.perf_counter() - t0
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            losses.append(step())
        synchronize(device)
        seconds = time.perf_counter() - start
        values = [float(v) for v in (torch.stack(losses).cpu() if not sc.reference else losses)]
        memory, _ = peak_memory(device)
        reserved = (
            torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else math.nan
        )
        if after is not None and not sc.reference:
            after(step, model, rt, images)
    return values, seconds, memory, reserved, first


def measure(
    sc: StepConfig,
    cfg: Config,
    device: torch.device,
    *,
    num_classes: int,
    warmup: int,
    steps: int,
    peak_tflops: float | None,
    flops_cache: dict[tuple[str, int], int],
    base_head: str,
    after: Callable[..., None] | None = None,
) -> Result:
    """Run one configuration and turn it into a table row; OOM and kernel errors become a status."""
    result = Result(
        config=sc,
        label=sc.label(device, base_head),
        device=device_name(device),
        image_size=cfg.data.image_size,
        warmup=warmup,
        steps=steps,
        peak_memory_kind=peak_memory(device)[1],
    )
    key = (sc.head, sc.batch_size)
    if key not in flops_cache:
        flops_cache[key] = count_train_flops(_with_head(cfg, sc.head), num_classes, sc.batch_size)
    flops = flops_cache[key]
    result.gflop_per_image = flops / sc.batch_size / 1e9
    error: str | None = None
    limit = sc.memory_limit_gib and device.type == "cuda"
    if limit:  # stand in for a smaller card: cap PyTorch's allocator
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(
            card_limit_gib(sc.memory_limit_gib) * 2**30 / total, device
        )
    try:
        losses, seconds, memory, reserved, first = run_config(
            sc, cfg, device, num_classes=num_classes, warmup=warmup, steps=steps, after=after
        )
    except torch.OutOfMemoryError:
        error = "OOM"
    except RuntimeError as exc:  # e.g. no SDPA kernel for this head size, a compile failure
        error = "failed: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
    finally:
        if limit:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    release(device, compiled=sc.compile != "none")
    if error is not None:
        result.status = error
        return result
    result.losses = losses
    result.seconds = seconds
    result.peak_memory_gib = memory
    result.peak_reserved_gib = reserved
    result.first_step_seconds = first
    if not all(math.isfinite(v) for v in losses[warmup:]):
        result.status = "failed: non-finite loss"
    if seconds > 0 and steps > 0:
        result.images_per_s = sc.batch_size * steps / seconds
        result.tflops = flops * steps / seconds / 1e12
        if peak_tflops:
            result.pct_of_peak = 100.0 * result.tflops / peak_tflops
    return result


def _with_head(cfg: Config, head: str) -> Config:
    model = replace(cfg.model, head=head)
    if head != "dual":  # model.batchformer applies to the dual head only
        model = replace(model, batchformer=ModelConfig().batchformer)
    return replace(cfg, model=model)


# --------------------------------------------------------------------------- output


def _fmt(value: float, spec: str, suffix: str = "") -> str:
    return "n/a" if not math.isfinite(value) else f"{value:{spec}}{suffix}"


def markdown_table(results: Sequence[Result]) -> str:
    header = (
        "| configuration | batch | device | images/s | TFLOP/s | % of peak | peak memory "
        "| peak reserved | first step | ratio to reference | loss first → last |"
    )
    lines = [header, "|" + "---|" * 11]
    for r in results:
        if r.status == "ok":
            memory = _fmt(r.peak_memory_gib, ".2f", " GiB")
            if r.peak_memory_kind == "process RSS":
                memory += " (RSS)"
            loss = f"{r.loss_first:.3f} → {r.loss_last:.3f}"
            cells = [
                _fmt(r.images_per_s, ".1f"),
                _fmt(r.tflops, ".3f" if r.tflops < 10 else ".1f"),
                _fmt(r.pct_of_peak, ".1f", "%"),
                memory,
                _fmt(r.peak_reserved_gib, ".2f", " GiB"),
                _fmt(r.first_step_seconds, ".1f", " s"),
                _fmt(r.ratio_to_reference, ".2f", "×"),
                loss,
            ]
        else:
            cells = [r.status, "", "", "", "", "", "", ""]
        lines.append(
            f"| {r.label} | {r.config.batch_size} | {r.device} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def write_outputs(out: Path, stem: str, header: str, results: Sequence[Result]) -> None:
    """`<stem>.md` (header + table) and `<stem>.csv`; rewritten after every configuration so
    that a run stopped by a timeout still leaves what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(header + "\n\n" + markdown_table(results) + "\n")
    with (out / f"{stem}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in results:
            row = {**asdict(r.config), "configuration": r.label, "image_size": r.image_size}
            row.update(
                device=r.device,
                status=r.status,
                images_per_s=_csv(r.images_per_s),
                tflops=_csv(r.tflops),
                pct_of_peak=_csv(r.pct_of_peak),
                peak_memory_gib=_csv(r.peak_memory_gib),
                peak_memory_kind=r.peak_memory_kind,
                peak_reserved_gib=_csv(r.peak_reserved_gib),
                first_step_seconds=_csv(r.first_step_seconds),
                ratio_to_reference=_csv(r.ratio_to_reference),
                loss_first=_csv(r.loss_first),
                loss_last=_csv(r.loss_last),
                loss_fell=r.loss_fell,
                warmup=r.warmup,
                steps=r.steps,
                seconds=_csv(r.seconds),
                gflop_per_image=_csv(r.gflop_per_image),
            )
            writer.writerow(row)


def _csv(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.6g}"


# --------------------------------------------------------------------------- command line


def add_common_arguments(
    p: argparse.ArgumentParser, *, unit: str, steps: int, warmup: int, out_files: str
) -> None:
    """The options this script and evaluate_speed.py share, with one meaning in both."""
    p.add_argument("--preset", default="paper-coco-448")
    p.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--steps", type=int, default=steps, help=f"timed {unit} (default: %(default)s)")
    p.add_argument(
        "--warmup", type=int, default=warmup, help=f"untimed {unit} (default: %(default)s)"
    )
    p.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
        help="autocast dtype; auto: bf16 on CUDA, fp32 on the CPU (as the engine)",
    )  # fmt: skip
    p.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None,
        help="default: the preset's train.channels_last on CUDA, off on the CPU (as the engine)",
    )  # fmt: skip
    p.add_argument(
        "--compile", choices=("auto", *COMPILE_MODES), default="auto",
        help="auto: 'default' on CUDA, none on the CPU (as the engine's train.compile=auto)",
    )  # fmt: skip
    p.add_argument(
        "--peak-tflops", type=float, default=None,
        help=f"for '%% of peak' (default on CUDA: {H100_BF16_PEAK_TFLOPS:g}, the H100's measured "
        "bf16 matmul rate; on the CPU: n/a unless given)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help=f"folder for {out_files}")


def parse_common(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(
        p, unit="steps", steps=30, warmup=10, out_files="train_step.md / train_step.csv"
    )
    p.add_argument("--image-size", type=int, help="default: the preset's data.image_size")
    p.add_argument("--batch-size", type=int, help="default: the preset's train.batch_size")
    p.add_argument(
        "--fused-adamw", action=argparse.BooleanOptionalAction, default=None,
        help="default: fused on CUDA, PyTorch's default AdamW on the CPU (as the engine)",
    )  # fmt: skip
    p.add_argument(
        "--batchformer", action=argparse.BooleanOptionalAction, default=None,
        help="dual head (with the BatchFormerV2 stream) or transformer head; default: the preset's",
    )  # fmt: skip
    p.add_argument("--sdpa-backend", choices=list(SDPA_BACKENDS), default="auto")
    p.add_argument(
        "--reference", action=argparse.BooleanOptionalAction, default=True,
        help="also time the Query2Label-style loop, side by side (default: on)",
    )  # fmt: skip
    p.add_argument("--matrix", action="store_true", help="run the list of configurations")
    p.add_argument(
        "--matrix-compile", nargs="*", choices=COMPILE_MODES, default=None,
        help="compile modes added to the matrix (default: 'default' on CUDA, none on the CPU)",
    )  # fmt: skip
    p.add_argument(
        "--matrix-batch-sizes", nargs="*", type=int, default=None,
        help="batch sizes added to the matrix (default: half and double on CUDA, none on the CPU)",
    )  # fmt: skip
    p.add_argument(
        "--matrix-sdpa", nargs="*", choices=list(SDPA_BACKENDS), default=[],
        help="SDPA backends added to the matrix (default: none)",
    )  # fmt: skip
    p.add_argument(
        "--time-budget", type=float, default=0,
        help="seconds; skip the matrix's remaining configurations after this (0: no limit)",
    )  # fmt: skip
    p.add_argument("--accumulation-steps", type=int, default=None,
                   help="micro-batches per optimizer step (default: the preset's)")  # fmt: skip
    p.add_argument("--checkpointing", choices=CHECKPOINTING, default=None,
                   help="activation checkpointing (default: the preset's)")  # fmt: skip
    p.add_argument(
        "--row", action="append", default=[], metavar="KEY=VALUE,...",
        help="instead of --matrix: one configuration per --row, changed from the requested one by "
        "reference (the Q2L loop), batch=N, compile=MODE, ckpt=none|backbone|head|all, accum=K, "
        "card=GIB (cap the allocator as a card of GIB GiB), head=dual|transformer, and "
        "preset=NAME (batch, accum and ckpt of that preset)",
    )  # fmt: skip
    p.add_argument(
        "--profile", action="store_true",
        help="after the first compiled configuration (else the first engine one), profile its step "
        "into profile.md (see benchmarks/profile_step.py)",
    )  # fmt: skip
    p.add_argument("--profile-steps", type=int, default=5, help="steps per profile view")
    p.add_argument("--stem", default="train_step", help="--out file names: STEM.md, STEM.csv")
    p.add_argument(
        "--reference-csv", type=Path, default=None,
        help="without a reference row: take the reference loop's images/s for the ratio column "
        "from this CSV of an earlier run on the same machine",
    )  # fmt: skip
    return parse_common(p, argv)


CHECKPOINTING = ("none", "backbone", "head", "all")


def parse_row(spec: str, requested: StepConfig, reference: StepConfig) -> StepConfig:
    """A --row: `reference` or KEY=VALUE pairs applied to the requested configuration."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    sc = reference if "reference" in items else requested
    for item in items:
        if item == "reference":
            continue
        key, _, value = item.partition("=")
        if key == "preset":
            train = load_config(value).train
            sc = replace(sc, batch_size=train.batch_size, accumulation_steps=train.accumulation_steps,
                         checkpointing=train.activation_checkpointing)  # fmt: skip
        elif key == "batch":
            sc = replace(sc, batch_size=int(value))
        elif key == "compile" and value in COMPILE_MODES:
            sc = replace(sc, compile=value)
        elif key == "ckpt" and value in CHECKPOINTING:
            sc = replace(sc, checkpointing=value)
        elif key == "accum":
            sc = replace(sc, accumulation_steps=int(value))
        elif key == "card":
            sc = replace(sc, memory_limit_gib=float(value))
        elif key == "head" and value in get_args(HeadName):
            sc = replace(sc, head=value)
        else:
            raise MlicError(f"--row {spec!r}: cannot read {item!r}")
    if sc.batch_size % sc.accumulation_steps:
        raise MlicError(f"--row {spec!r}: accum={sc.accumulation_steps} does not divide the batch")
    return sc


def base_config(args: argparse.Namespace) -> Config:
    """The preset with --set on top; never downloads weights (the timing needs none)."""
    overrides = [*args.set, "model.pretrained=false", "model.pretrained_file="]
    if args.image_size:
        overrides.append(f"data.image_size={args.image_size}")
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    overrides.append(f"train.device={args.device}")
    return load_config(args.preset, overrides)


def requested_config(args: argparse.Namespace, cfg: Config, device: torch.device) -> StepConfig:
    cuda = device.type == "cuda"
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if cuda else "fp32"
    channels_last = args.channels_last
    if channels_last is None:
        channels_last = cfg.train.channels_last and cuda
    head = cfg.model.head
    if args.batchformer is not None:
        head = "dual" if args.batchformer else "transformer"
    return StepConfig(
        precision=precision,
        channels_last=channels_last,
        compile=resolve_compile_mode(args.compile, device),
        fused_adamw=cuda if args.fused_adamw is None else args.fused_adamw,
        head=head,
        batch_size=cfg.train.batch_size,
        sdpa_backend=args.sdpa_backend,
        accumulation_steps=args.accumulation_steps or cfg.train.accumulation_steps,
        checkpointing=args.checkpointing or cfg.train.activation_checkpointing,
    )


def resolve_compile_mode(mode: str, device: torch.device) -> str:
    """--compile auto: as the engine's train.compile=auto, 'default' on CUDA, none on the CPU."""
    if mode != "auto":
        return mode
    return "default" if resolve_compile("auto", device) else "none"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = base_config(args)
        # The engine's runtime: resolves the device and sets its CUDA flags (TF32, cudnn.benchmark).
        device = make_runtime(cfg).device
    except MlicError as exc:
        print(f"train_step: error: {exc}", file=sys.stderr)
        return 2
    num_classes = 80 if cfg.data.dataset == "coco" else 20
    cuda = device.type == "cuda"
    peak = args.peak_tflops if args.peak_tflops else (H100_BF16_PEAK_TFLOPS if cuda else None)
    requested = requested_config(args, cfg, device)
    if args.row:
        ref = matrix_configs(device, requested, batch_sizes=[], compile_modes=[], sdpa_backends=[])
        try:
            configs = [parse_row(spec, requested, ref[0]) for spec in args.row]
        except (MlicError, ValueError) as exc:
            print(f"train_step: error: {exc}", file=sys.stderr)
            return 2
    elif args.matrix:
        b = requested.batch_size
        configs = matrix_configs(
            device,
            requested,
            batch_sizes=args.matrix_batch_sizes
            if args.matrix_batch_sizes is not None
            else ([max(b // 2, 2), 2 * b] if cuda else []),
            compile_modes=args.matrix_compile
            if args.matrix_compile is not None
            else (["default"] if cuda else []),
            sdpa_backends=args.matrix_sdpa,
        )
        if not args.reference:
            configs = [c for c in configs if not c.reference]
    else:
        ref = matrix_configs(device, requested, batch_sizes=[], compile_modes=[], sdpa_backends=[])
        configs = ([ref[0]] if args.reference else []) + [requested]

    m = cfg.model
    header = "\n".join(
        [
            f"# Training step: preset {args.preset}, {m.backbone} + {m.head} head "
            f"(d_model {m.d_model}, FFN {m.dim_feedforward}), {cfg.data.image_size} px",
            "",
            f"- device: {device_name(device)}; torch {torch.__version__}; "
            f"{args.warmup} warm-up + {args.steps} timed steps on one fixed synthetic batch",
            f"- TFLOP/s: matmul + convolution FLOPs (FlopCounterMode, math attention) per step "
            f"/ time; % of peak against {peak:g} TFLOP/s"
            if peak
            else "- TFLOP/s: matmul + convolution FLOPs (FlopCounterMode, math attention) "
            "per step / time; % of peak: n/a on the CPU",
            "- ratio to reference: images/s over the Query2Label-style loop's, "
            + (
                "same process"
                if not args.reference_csv
                else f"same process, else from {args.reference_csv.name} (an earlier process)"
            ),
        ]
    )
    print(header, flush=True)
    results: list[Result] = []
    flops_cache: dict[tuple[str, int], int] = {}
    earlier_ref = _reference_rate(args.reference_csv)
    start = time.perf_counter()
    to_profile = None
    if args.profile:
        engine_rows = [c for c in configs if not c.reference]
        to_profile = next((c for c in engine_rows if c.compile != "none"), None) or next(
            iter(engine_rows), None
        )
    for sc in configs:
        if args.time_budget and time.perf_counter() - start > args.time_budget:
            label = sc.label(device, cfg.model.head)
            skipped = Result(sc, label, device_name(device), cfg.data.image_size)
            skipped.status = "skipped: time budget"
            results.append(skipped)
            continue
        r = measure(
            sc,
            cfg,
            device,
            num_classes=num_classes,
            warmup=args.warmup,
            steps=args.steps,
            peak_tflops=peak,
            flops_cache=flops_cache,
            base_head=cfg.model.head,
            after=_profiler(args, sc, cfg, device) if sc is to_profile else None,
        )
        results.append(r)
        ref_rate = next((x.images_per_s for x in results if x.config.reference), earlier_ref)
        for x in results:
            x.ratio_to_reference = x.images_per_s / ref_rate if ref_rate > 0 else math.nan
        print(
            f"  {r.label} (batch {sc.batch_size}): {r.status}, "
            f"{_fmt(r.images_per_s, '.1f')} images/s, {_fmt(r.tflops, '.3f')} TFLOP/s, "
            f"loss {_fmt(r.loss_first, '.3f')} → {_fmt(r.loss_last, '.3f')}",
            flush=True,
        )
        if args.out:
            write_outputs(args.out, args.stem, header, results)

    print()
    print(markdown_table(results))
    flops_lines = sorted(
        f"- training FLOPs per image: {g / b / 1e9:.1f} GFLOP ({h} head, batch {b})"
        for (h, b), g in flops_cache.items()
    )
    print("\n".join(["", *flops_lines]))
    return _verdict(results)


def _reference_rate(path: Path | None) -> float:
    """The reference loop's images/s from an earlier run's CSV (nan when absent)."""
    if path is None or not path.is_file():
        return math.nan
    with path.open() as f:
        for row in csv.DictReader(f):
            if row.get("reference") == "True" and row.get("images_per_s"):
                return float(row["images_per_s"])
    return math.nan


def _profiler(args: argparse.Namespace, sc: StepConfig, cfg: Config, device: torch.device):
    """The callback that profiles one configuration's step (benchmarks/profile_step.py)."""
    import profile_step as ps

    def run(step, model, rt, images) -> None:
        step_with, net, loss_fn, optimizer = step.parts
        n = args.profile_steps
        t0 = time.perf_counter()
        phases = ps.phase_split(step_with, net, loss_fn, optimizer, device, n)
        kernels = ps.kernel_table(step, device, max(1, n // 2))
        optimizer.zero_grad(set_to_none=True)  # the parts below only need the activations' room
        parts = ps.part_split(model, images, rt.autocast, device, warmup=1, steps=n)
        with rt.autocast():
            eager_ms = ps._fwd_bwd_ms(lambda: model(images), device, 1, n)
        title = f"Profile of one training step: {sc.label(device, cfg.model.head)}, batch {sc.batch_size}"
        notes = [
            f"device: {device_name(device)}; torch {torch.__version__}; preset {args.preset}, "
            f"{cfg.data.image_size} px; {n} steps per view (kernels: {max(1, n // 2)})",
            "phases and kernels: the configuration's own step (compiled if it is); parts: the "
            "same model eager, each part's forward + backward alone (a sum of squares as loss)",
            f"profiled in {time.perf_counter() - t0:.1f} s",
        ]
        text = ps.markdown(title, phases, kernels, parts, eager_ms, notes)
        print(text, flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "profile.md").write_text(text)

    return run


def _verdict(results: Sequence[Result]) -> int:
    """0 when every configuration ran (or ran out of memory) and its loss fell."""
    code = 0
    for r in results:
        if r.status.startswith("failed"):
            print(f"train_step: error: {r.label}: {r.status}", file=sys.stderr)
            code = 1
        elif r.loss_checked and not r.loss_fell:
            print(
                f"train_step: error: {r.label}: the loss did not fall over "
                f"{r.warmup + r.steps} steps on a fixed batch ({r.loss_first:.4f} → "
                f"{r.loss_last:.4f}); the step does not train",
                file=sys.stderr,
            )
            code = 1
    if any(r.status == "ok" and not r.loss_checked for r in results):
        print(f"- loss not checked: fewer than {MIN_STEPS_FOR_LOSS_CHECK} steps")
    return code


if __name__ == "__main__":
    sys.exit(main())
