"""Where the time of one training step goes, written as profile.md.

Three views, each chosen for what it can attribute reliably:

1. **Phases of the (compiled) step**, from device events around each phase: forward (the
   compiled model), loss (ASL, eager), backward, optimizer (fused AdamW, via the optimizer's
   step hooks), EMA. The events sit outside the compiled graph, so compilation does not blur
   them; `mlic.engine.training_step` itself runs unchanged (the model and the loss are wrapped).
2. **Kernels of the compiled step** (torch.profiler, device activity): the kernels by total
   time, and grouped into convolution, matrix product, fused (Triton) element-wise, attention,
   optimizer/EMA multi-tensor and other. This shows whether the split-attention grouped
   convolutions or the many small kernels dominate.
3. **Parts of the model, eager and in isolation**: forward + backward of the backbone, the
   encoder layers, the BatchFormerV2 stream and the decoder, each on inputs of the real
   shapes. Inside a compiled graph Inductor fuses across module boundaries and the backward is
   one opaque function, so a per-module split of the compiled step is not measurable; the eager
   parts give the shares, and their sum is compared with the eager step's forward + backward.

On a CPU (the dry run) the same code runs with wall-clock timers and CPU operators.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from mlic.models.transformer import batch_attention

KERNEL_GROUPS = (  # (group, substrings of the kernel name, lower case), first match wins
    ("optimizer / EMA (multi-tensor)", ("multi_tensor", "fused_adam", "foreach", "lerp")),
    ("attention", ("fmha", "flash", "attention", "softmax")),
    ("convolution (cuDNN)", ("conv", "implicit", "xmma_fprop", "dgrad", "wgrad", "cudnn")),
    ("matrix product (cuBLAS/CUTLASS)", ("gemm", "cutlass", "nvjet", "matmul", "mm_")),
    ("batch norm", ("batch_norm", "bn_fw", "bn_bw", "batchnorm")),
    ("fused element-wise (Triton)", ("triton",)),
    ("copy / layout", ("copy", "transpose", "cat", "elementwise_kernel")),
)


class Timer:
    """Marks on the device timeline (CUDA events) or the wall clock (CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def spans_ms(self) -> dict[str, float]:
        """Milliseconds from each mark to the next, summed by the earlier mark's name."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = defaultdict(float)
        for (name, a), (_, b) in zip(self.marks, self.marks[1:], strict=False):
            out[name] += a.elapsed_time(b) if self.cuda else (b - a) * 1e3
        return dict(out)


class _Marked:
    """Calls `fn`, marking the timer before (`before`) and after (`after`)."""

    def __init__(self, fn: Callable, timer: Timer, before: str, after: str) -> None:
        self.fn, self.timer, self.before, self.after = fn, timer, before, after

    def __call__(self, *args, **kwargs):
        self.timer.mark(self.before)
        out = self.fn(*args, **kwargs)
        self.timer.mark(self.after)
        return out


def phase_split(
    run_step: Callable[[Callable, Callable], None],
    model: Callable,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    steps: int,
) -> dict[str, float]:
    """Mean ms per step of forward / loss / backward / optimizer / EMA.

    `run_step(model, loss_fn)` runs one training step with the given (wrapped) model and loss
    and then the EMA update; the marks: forward -> loss -> backward -> optimizer -> EMA -> end.
    """
    timer = Timer(device)
    pre = optimizer.register_step_pre_hook(lambda *a: timer.mark("optimizer"))
    post = optimizer.register_step_post_hook(lambda *a: timer.mark("EMA and the rest"))
    try:
        marked_model = _Marked(model, timer, "forward", "loss")
        marked_loss = _Marked(loss_fn, timer, "loss", "backward")
        for _ in range(steps):
            run_step(marked_model, marked_loss)
            timer.mark("(between steps)")
    finally:
        pre.remove()
        post.remove()
    spans = timer.spans_ms()
    spans.pop("(between steps)", None)
    return {name: ms / steps for name, ms in spans.items()}


def kernel_table(step: Callable[[], Any], device: torch.device, steps: int, top: int = 15):
    """(top kernels [(name, ms per step, share)], groups [(group, ms per step, share)])."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    per_name: dict[str, float] = defaultdict(float)
    if cuda:
        for evt in prof.events():
            if evt.device_type == DeviceType.CUDA:
                per_name[evt.name] += evt.time_range.elapsed_us() / 1e3 / steps
        if not per_name:  # a profiler that does not list kernels as events: operators' device time
            for evt in prof.key_averages():
                ms = (getattr(evt, "self_device_time_total", 0) or 0) / 1e3 / steps
                if ms > 0:
                    per_name[evt.key] += ms
    else:  # the CPU dry run: aten operators' own time
        for evt in prof.key_averages():
            if evt.key.startswith("aten::"):
                per_name[evt.key] += evt.self_cpu_time_total / 1e3 / steps
    total = sum(per_name.values()) or 1.0
    kernels = sorted(per_name.items(), key=lambda kv: -kv[1])
    groups: dict[str, float] = defaultdict(float)
    for name, ms in kernels:
        groups[_group(name)] += ms
    top_rows = [(name, ms, ms / total) for name, ms in kernels[:top]]
    group_rows = sorted(((g, ms, ms / total) for g, ms in groups.items()), key=lambda r: -r[1])
    return top_rows, group_rows


def _group(name: str) -> str:
    low = name.lower()
    for group, keys in KERNEL_GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def _fwd_bwd_ms(fn: Callable[[], Tensor], device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn().float().square().mean().backward()
    timer = Timer(device)
    for _ in range(steps):
        timer.mark("step")
        fn().float().square().mean().backward()
    timer.mark("end")
    return timer.spans_ms()["step"] / steps


def part_split(
    model: nn.Module,
    images: Tensor,
    autocast: Callable,
    device: torch.device,
    warmup: int,
    steps: int,
) -> list[tuple[str, float]]:
    """Eager forward + backward ms of each part of the model, on inputs of the real shapes."""
    model.train()
    head = model.head
    rows: list[tuple[str, float]] = []
    with autocast():
        rows.append(("backbone (forward + backward)",
                     _fwd_bwd_ms(lambda: model.backbone.forward_features(images), device, warmup, steps)))  # fmt: skip
        with torch.no_grad():
            features = model.backbone.forward_features(images)
        if not hasattr(head, "encoder"):  # gap head
            return rows
        x = head.input_proj(features)
        b, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2).detach().requires_grad_()  # [B, hw, d]
        pos = head.position(h, w, device=x.device, dtype=tokens.dtype).unsqueeze(0)
        enc = head.encoder
        rows.append(("encoder layers, image tokens", _fwd_bwd_ms(
            lambda: _encoder_layers(enc, tokens, pos), device, warmup, steps)))  # fmt: skip
        if enc.batchformer is not None:
            branch = enc.layers[0] if enc.batch_layer is None else enc.batch_layer
            rows.append(("BatchFormerV2 stream (batch attention)", _fwd_bwd_ms(
                lambda: batch_attention(branch, tokens), device, warmup, steps)))  # fmt: skip
        with torch.no_grad():
            memory = enc(tokens, pos)  # [2B, hw, d] with the branch
        memory = memory.detach().requires_grad_()
        rows.append((f"decoder + classifier ({memory.shape[0]} rows)", _fwd_bwd_ms(
            lambda: head.classifier(head.decoder(memory, pos, head.query_embed.weight)[0]),
            device, warmup, steps)))  # fmt: skip
    return rows


def _encoder_layers(enc: nn.Module, tokens: Tensor, pos: Tensor) -> Tensor:
    x = tokens
    for layer in enc.layers:
        x = layer(x, pos)
    return x


def markdown(
    title: str,
    phases: dict[str, float] | None,
    kernels: tuple[list, list] | None,
    parts: list[tuple[str, float]] | None,
    eager_step_ms: float | None,
    notes: list[str],
) -> str:
    lines = [f"# {title}", "", *[f"- {n}" for n in notes], ""]
    if phases:
        total = sum(phases.values())
        lines += ["## Phases of the step (device events)", "",
                  "| phase | ms per step | share |", "|---|---:|---:|"]  # fmt: skip
        lines += [f"| {k} | {v:.2f} | {100 * v / total:.1f}% |" for k, v in phases.items()]
        lines += [f"| total | {total:.2f} | 100% |", ""]
    if kernels:
        top, groups = kernels
        lines += ["## Kernels by group (torch.profiler)", "",
                  "| group | ms per step | share |", "|---|---:|---:|"]  # fmt: skip
        lines += [f"| {g} | {ms:.2f} | {100 * s:.1f}% |" for g, ms, s in groups]
        lines += ["", "## Top kernels", "", "| kernel | ms per step | share |", "|---|---:|---:|"]
        lines += [f"| `{_short(n)}` | {ms:.2f} | {100 * s:.1f}% |" for n, ms, s in top]
        lines.append("")
    if parts:
        total = sum(ms for _, ms in parts)
        lines += ["## Parts of the model, eager, forward + backward each in isolation", "",
                  "| part | ms | share of the parts |", "|---|---:|---:|"]  # fmt: skip
        lines += [f"| {name} | {ms:.2f} | {100 * ms / total:.1f}% |" for name, ms in parts]
        lines.append(f"| sum of the parts | {total:.2f} | 100% |")
        if eager_step_ms:
            lines.append(f"| eager step, forward + loss + backward | {eager_step_ms:.2f} | |")
        lines.append("")
    return "\n".join(lines)


def _short(name: str, width: int = 90) -> str:
    name = name.replace("|", "/").replace("`", "'")
    return name if len(name) <= width else name[: width - 1] + "…"
