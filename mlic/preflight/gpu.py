"""The GPU a run needs and the time it takes, from the paper model's measured figures
(mlic/measurements.py): memory per GPU against the card's, and the time per epoch on one H200.
Other models, partial activation checkpointing and several GPUs are not measured; the findings
say so instead of guessing."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlic import measurements as measured
from mlic.config import Config
from mlic.data.sources import EXPECTED_IMAGES
from mlic.preflight.data import Counts, data_key
from mlic.preflight.report import Finding

CONTEXT_GIB = 1.0  # CUDA context and libraries, beside the tensors the measurements count


def check_gpu(
    configs: Sequence[tuple[str, Config]], counts: dict[tuple, Counts], *, gpus: int = 1
) -> list[Finding]:
    """The card against each run's memory need, and each run's epoch time, from the paper
    model's measurements."""
    findings = []
    total_gib = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        total_gib = props.total_memory / 2**30
        n = torch.cuda.device_count()
        findings.append(
            Finding("info", "gpu", f"{n} x {props.name}, {total_gib:.1f} GiB each (GPU 0 checked)")
        )
        if gpus > n:
            findings.append(Finding("FAIL", "gpu", f"--gpus {gpus}, but {n} GPU(s) are visible"))
    else:
        findings.append(
            Finding(
                "warn",
                "gpu",
                f"no CUDA GPU visible (torch {torch.__version__}): the paper presets are for "
                "GPUs; the figures below are for one H200",
            )
        )
    unmeasured = []
    for label, cfg in configs:
        need, how = memory_need(cfg, gpus)
        time = epoch_time(label, cfg, counts.get(data_key(cfg), Counts()), gpus)
        if need is None and time is None:
            unmeasured.append(label)
            continue
        if need is None:
            findings.append(Finding("info", "gpu", f"{label}: {how}"))
        elif total_gib is None:
            findings.append(
                Finding("info", "gpu", f"{label}: needs {need:.1f} GiB per GPU ({how})")
            )
        elif need <= total_gib - CONTEXT_GIB:
            findings.append(
                Finding("ok", "gpu", f"{label}: needs {need:.1f} GiB per GPU ({how}): fits")
            )
        else:
            findings.append(
                Finding(
                    "FAIL",
                    "gpu",
                    f"{label}: needs {need:.1f} GiB per GPU ({how}), the card has "
                    f"{total_gib:.1f}; split the batch with train.accumulation_steps and/or "
                    "train.activation_checkpointing=all (presets paper-coco-448-24gb, -8gb)",
                )
            )
        findings.append(time or Finding("info", "time", f"{label}: epoch time not measured"))
    if unmeasured:
        findings.append(
            Finding(
                "info",
                "gpu",
                f"no GPU figures for {', '.join(unmeasured)}: only ResNeSt-101e + dual head "
                "(d_model 2048) was measured",
            )
        )
    return findings


def _micro_batch(cfg: Config, gpus: int) -> int:
    return max(1, cfg.train.batch_size // max(gpus, 1) // cfg.train.accumulation_steps)


def _is_measured(cfg: Config) -> bool:
    m = cfg.model
    return measured.is_measured_model(m.backbone, m.head, m.d_model, m.dim_feedforward)


def memory_need(cfg: Config, gpus: int = 1) -> tuple[float | None, str]:
    """(GiB per GPU, how it was obtained) for a training step; None when nothing measured
    applies (another model, partial checkpointing)."""
    m, t = cfg.model, cfg.train
    if not _is_measured(cfg):
        return None, (
            f"no GPU measurement for {m.backbone} + {m.head} head (d_model {m.d_model}); "
            "only ResNeSt-101e + dual head was measured"
        )
    micro, size = _micro_batch(cfg, gpus), cfg.data.image_size
    per_image = measured.PER_IMAGE_GIB_448 * (size / 448) ** 2
    fit = f"{measured.FIXED_GIB} GiB + {per_image:.2f} GiB per image"
    if t.activation_checkpointing == "all":
        need = measured.FIXED_GIB + measured.CHECKPOINT_ALL_FACTOR * per_image * micro
        return need, f"{micro} images per pass, checkpointing all: planned, not measured"
    if t.activation_checkpointing != "none":
        return None, f"activation_checkpointing={t.activation_checkpointing}: not estimated"
    step = measured.train_step(size, micro, compiled=False)
    if step is not None:
        compiled = measured.train_step(size, micro, compiled=True)
        also = f"; compiled {compiled.peak_gib:.1f}" if compiled else ""
        return step.peak_gib, f"{micro} images per pass, eager, {measured.MEASURED_ON}{also}"
    need = measured.FIXED_GIB + per_image * micro
    scaled = f", scaled to {size} px by pixel count" if size != 448 else ""
    return need, f"{micro} images per pass: {fit}{scaled}, projected from the H200 figures"


def epoch_time(label: str, cfg: Config, counts: Counts, gpus: int = 1) -> Finding | None:
    """Time per epoch on one H200: training at the measured step rate plus two evaluations of
    the validation split (the model and its EMA, every epoch); None when nothing measured
    applies."""
    rates = _rates(cfg)
    if rates is None:
        return None
    (train_rate, kind), eval_rate = rates
    epochs = cfg.train.epochs
    full = EXPECTED_IMAGES.get(cfg.data.dataset, {})
    full_counts = (full.get(cfg.data.split("train")), full.get(cfg.data.split("val")))
    n_train = counts.train if counts.train is not None else full_counts[0]
    n_val = counts.val if counts.val is not None else full_counts[1]
    if n_train is None or n_val is None:
        return Finding("info", "time", f"{label}: the splits' sizes are unknown")

    def seconds(n: int, m: int) -> float:
        return n / train_rate + 2 * m / eval_rate

    each = seconds(n_train, n_val)
    text = (
        f"{label}: about {_duration(each)} per epoch, {_duration(each * epochs)} for {epochs} "
        f"epochs on one H200 ({n_train:,} images at {train_rate:.0f}/s {kind} + 2 x {n_val:,} "
        f"evaluated at {eval_rate:.0f}/s)"
    )
    if None not in full_counts and (n_train, n_val) != full_counts and not cfg.data.is_embedded:
        whole = seconds(*full_counts)
        text += f"; the full splits: {_duration(whole)} per epoch, {_duration(whole * epochs)}"
    if gpus > 1:
        text += f"; {gpus} GPUs: at best 1/{gpus} of it (scaling not measured)"
    return Finding("info", "time", text + "; compile time and the loader not included")


def _rates(cfg: Config) -> tuple[tuple[float, str], float] | None:
    """((training images/s, which step), evaluation images/s) measured for this configuration."""
    t, size = cfg.train, cfg.data.image_size
    ev = measured.eval_step(size)
    if not _is_measured(cfg) or ev is None or t.activation_checkpointing != "none":
        return None
    micro = _micro_batch(cfg, 1)
    compiled = t.compile in (True, "auto")  # "auto" compiles on CUDA
    step = measured.train_step(size, micro, compiled)
    kind = "compiled" if compiled else "eager"
    if step is None and compiled:
        step, kind = measured.train_step(size, micro, False), "eager (compiled not measured)"
    if step is None:
        return None
    return (step.images_per_s, kind), ev.images_per_s


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
