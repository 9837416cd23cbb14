"""Training and evaluation: `train_one_epoch`, `evaluate`, and `fit`, which loops epochs and
writes the run record.

One loop for the CPU and the GPU. On CUDA it adds bf16 autocast, channels_last, fused AdamW,
torch.compile (eager if compilation fails), pinned memory with non-blocking copies, persistent
workers, and DDP under `torchrun`; activation checkpointing and gradient accumulation fit the
model to smaller cards. On the CPU it is exactly reproducible: every epoch reseeds Python, NumPy,
torch, the sampler and the loader workers from (seed, epoch), so a run resumed from the
checkpoint of epoch e is bit-identical to one that never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm  # plain bars: notebooks turn them off (not a terminal)

from mlic.checkpoint import (
    check_architecture,
    check_contents,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from mlic.compilation import Compiler, resolve_compile
from mlic.config import Config, DataConfig, from_dict, load_config
from mlic.config_rules import cpu_batch_memory_problem
from mlic.cpu import configure_cpu
from mlic.data import build_dataset, collate_skip_unreadable, cutmix, to_model_input
from mlic.data.checks import require_labels, unseen_in_training
from mlic.data.holdout import without_holdout
from mlic.distributed import (
    DistInfo,
    ShardSampler,
    all_reduce_sum,
    gather_by_index,
    init_distributed,
    sync_buffers,
)
from mlic.errors import CheckpointError, ConfigError, MlicError
from mlic.losses import AsymmetricLoss
from mlic.metrics import compute_metrics, map_by_size
from mlic.models import build_model_from_config
from mlic.runrecord import (
    HISTORY_COLUMNS,
    ITERATION_COLUMNS,
    atomic_write_text,
    check_new_run,
    git_commit,
    read_metrics,
    remove_record,
    run_lock,
    software_versions,
    write_csv,
    write_json,
)

LOG_EVERY = 20  # iterations between host syncs for the progress bar and the finiteness check


# --------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class Runtime:
    """Where and how the computation runs; derived from the config and the launcher."""

    device: torch.device
    dist: DistInfo
    amp_dtype: torch.dtype | None
    channels_last: bool
    # torch.compile for training and evaluation (None: eager; benchmarks compile themselves).
    compiler: Compiler | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MlicError(f"train.device={name!r} but no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise MlicError(
            f"train.device={name!r}: there are {torch.cuda.device_count()} CUDA devices"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MlicError(f"train.device={name!r} but MPS is not available")
    return device


def make_runtime(cfg: Config) -> Runtime:
    device = resolve_device(cfg.train.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    elif device.type == "cpu":
        problem = cpu_batch_memory_problem(cfg)  # before any allocation (mlic.config_rules)
        if problem:
            raise ConfigError(f"on the CPU, {problem}")
        configure_cpu(cfg.train.num_threads)  # denormals flushed, threads set (mlic.cpu)
    compiler = Compiler(resolve_compile(cfg.train.compile, device), cfg.train.compile_mode)
    channels_last = cfg.train.channels_last and device.type == "cuda"
    return Runtime(device, info, amp_dtype, channels_last, compiler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % 2**31


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive Python's and NumPy's from it.
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


# --------------------------------------------------------------------------- data


class EpochShuffleSampler(Sampler[int]):
    """A shuffle fixed by (seed, epoch), sharded across ranks; drops the ragged tail so every
    rank runs the same number of full batches (DDP needs that; BatchFormer needs B >= 2)."""

    def __init__(self, length: int, batch_size: int, seed: int, info: DistInfo):
        self.length, self.batch_size, self.seed, self.info = length, batch_size, seed, info
        per_rank = length // info.world_size
        self.num_samples = (per_rank // batch_size) * batch_size
        if self.num_samples == 0:
            raise MlicError(
                f"the training split has {length} images, fewer than one batch of {batch_size} "
                f"per process ({info.world_size} processes); lower train.batch_size"
            )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.length, generator=g).tolist()
        mine = order[self.info.rank :: self.info.world_size]
        return iter(mine[: self.num_samples])

    def __len__(self) -> int:
        return self.num_samples


def _loader(dataset, batch_size: int, sampler: Sampler, cfg: Config, rt: Runtime, train: bool):
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip_unreadable,
        pin_memory=rt.cuda,
        drop_last=False,
        persistent_workers=rt.cuda and workers > 0 and train,
        worker_init_fn=_seed_worker,
        generator=torch.Generator(),
        prefetch_factor=4 if workers > 0 else None,
    )


def _images_to_device(images: torch.Tensor, rt: Runtime, data: DataConfig) -> torch.Tensor:
    """Copy a (uint8) batch, then finish it on the device: a quarter of the bytes to move, and
    the float conversion off the loader workers. The layout change is done on the uint8 copy
    (a quarter of the bytes again); the conversion keeps it."""
    images = images.to(rt.device, non_blocking=True)
    if rt.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return to_model_input(images, data.mean, data.std)


# --------------------------------------------------------------------------- model & optimiser


def param_groups(
    model: nn.Module,
    weight_decay: float,
    exempt: str = "norm_bias_queries",
    batchformer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """AdamW groups by `train.weight_decay_exempt`: "none" decays every parameter (Query2Label's
    main_mlc.py); "norm_bias" exempts 1-D tensors and biases (ASL's add_weight_decay);
    "norm_bias_queries" also exempts embeddings (the learned class queries).

    `batchformer_decay` (`train.batchformer_weight_decay`), when set, is the decay of the
    BatchFormerV2 layer's own parameters, as the official BatchFormerV2 code's separate group with
    `--bt_decay`; the exemption policy still applies to that layer's norms and biases."""
    if exempt not in ("none", "norm_bias", "norm_bias_queries"):
        raise MlicError(f"train.weight_decay_exempt={exempt!r} is not a known policy")
    decay, batch_layer, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        norm_or_bias = p.ndim <= 1 or name.endswith(".bias")
        embedding = "query_embed" in name or "embed" in name.split(".")[-1]
        if exempt != "none" and (norm_or_bias or (exempt == "norm_bias_queries" and embedding)):
            no_decay.append(p)
        # TransformerEncoder.batch_layer: the separate BatchFormerV2 layer (under DDP too).
        elif batchformer_decay is not None and ".batch_layer." in f".{name}":
            batch_layer.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": batch_layer, "weight_decay": batchformer_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: Config, rt: Runtime) -> torch.optim.AdamW:
    t = cfg.train
    groups = param_groups(model, t.weight_decay, t.weight_decay_exempt, t.batchformer_weight_decay)
    return torch.optim.AdamW(groups, lr=t.lr, fused=rt.cuda or None)


def build_scheduler(optimizer, cfg: Config, steps_per_epoch: int):
    t = cfg.train
    # The paper's "initial learning rate 1e-6" is read as OneCycle's starting lr = lr / div_factor
    # (1e-4 / 100 in the paper presets: our reading; Query2Label's and ASL's scripts use OneCycle
    # with its default div_factor 25, i.e. a start at 4e-6).
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=t.lr,
        total_steps=t.epochs * steps_per_epoch,
        pct_start=t.pct_start,
        div_factor=t.div_factor,
        final_div_factor=t.final_div_factor,
    )


def build_ema(model: nn.Module, cfg: Config):
    """timm's ModelEmaV3 with its update on cached tensor lists (mlic/ema.py): per optimizer step."""
    from mlic.ema import ForeachEma

    return ForeachEma(model, decay=cfg.train.ema_decay)


# --------------------------------------------------------------------------- one epoch


def train_one_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    ema,
    ema_target: nn.Module,
    *,
    epoch: int,
    cfg: Config,
    rt: Runtime,
    scaler: torch.amp.GradScaler | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """One pass over the training split. Returns the epoch's mean loss (ASL per sample), the lr
    at its end, throughput, skipped images and (optionally) the loss of every iteration."""
    model.train()
    compiler = rt.compiler or Compiler(False)
    net = compiler.wrap(model)  # compiled once per run (cached), eager after a failure
    mix_gen = torch.Generator().manual_seed(epoch_seed(cfg.train.seed, epoch) + 1)
    loss_sum = torch.zeros((), device=rt.device, dtype=torch.float64)
    iteration_losses: list[torch.Tensor] = []
    iteration_lrs: list[float] = []
    seen, skipped, steps = 0, 0, 0
    start = time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    for images, targets, _ignore, num_skipped in bar:
        skipped += num_skipped
        if images.shape[0] < ema_target.min_training_batch:
            # Unreadable images left one: the dual head and ResNeSt need >= 2 to train on.
            skipped += images.shape[0]
            continue
        # CutMix on the device: on a GPU it is a cheap slice copy; on the host it would cost
        # ~150 ms per 64 x 448 px batch and break the pinned, non-blocking copy.
        images = _images_to_device(images, rt, cfg.data)
        targets = targets.to(rt.device, non_blocking=True)
        if cfg.data.cutmix_prob > 0:
            images, targets = cutmix(
                images,
                targets,
                alpha=cfg.data.cutmix_alpha,
                prob=cfg.data.cutmix_prob,
                mode=cfg.data.cutmix_targets,
                generator=mix_gen,
            )
        loss = compiler.run(
            net, training_step, loss_fn, optimizer, images, targets, rt, scaler=scaler,
            grad_clip=cfg.train.grad_clip, accumulation_steps=cfg.train.accumulation_steps,
        )  # fmt: skip
        # One optimizer step, so one scheduler step and one EMA update, whatever the micro-batches.
        scheduler.step()
        ema.update(ema_target)

        loss_sum += loss
        steps += 1
        seen += images.shape[0]
        if cfg.train.log_iteration_loss:
            iteration_losses.append(loss)
            iteration_lrs.append(scheduler.get_last_lr()[0])
        if steps % LOG_EVERY == 0:
            _check_finite(loss, epoch, steps)
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{loss.item():.3f}",
                lr=f"{scheduler.get_last_lr()[0]:.2e}",
                img_s=f"{seen * rt.dist.world_size / elapsed:.0f}",
            )
    if rt.cuda:
        torch.cuda.synchronize(rt.device)
    seconds = time.perf_counter() - start
    mean_loss = (loss_sum / max(steps, 1)).item()
    _check_finite(torch.tensor(mean_loss), epoch, steps)
    seen_all = all_reduce_sum(float(seen), rt.dist, rt.device)
    iterations = [
        {"epoch": epoch + 1, "iteration": i + 1, "loss": float(v), "lr": lr}
        for i, (v, lr) in enumerate(
            zip(
                torch.stack(iteration_losses).cpu().tolist() if iteration_losses else [],
                iteration_lrs,
                strict=True,
            )
        )
    ]
    return {
        "train_loss": all_reduce_sum(mean_loss, rt.dist, rt.device) / rt.dist.world_size,
        "lr": scheduler.get_last_lr()[0],
        "seconds": seconds,
        "images_per_s": seen_all / seconds if seconds > 0 else 0.0,
        "skipped_images": int(all_reduce_sum(float(skipped), rt.dist, rt.device)),
        "iterations": iterations,
    }


def training_step(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    targets: torch.Tensor,
    rt: Runtime,
    *,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
    accumulation_steps: int = 1,
) -> torch.Tensor:
    """Forward, ASL on every stream, backward and the optimiser step; returns the detached loss
    without a host sync. Shared with benchmarks/train_step.py, so it times this very code.

    With `accumulation_steps` k > 1 the batch is split into k micro-batches, each forwarded and
    backpropagated on its own, its loss weighted by its share of the images; the optimizer then
    steps once on the summed gradients, as for the whole batch. That is exact for a model whose
    rows do not interact; the dual head's batch attention and BatchNorm then see one
    micro-batch at a time. The returned loss is the batch's (the weighted sum).
    """
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=images.device)
    count = images.shape[0]
    k = accumulation_steps
    pieces = list(zip(images.tensor_split(k), targets.tensor_split(k), strict=True))
    for i, (micro_images, micro_targets) in enumerate(pieces):
        # DDP: all-reduce the gradients once, after the last micro-batch.
        no_sync = getattr(model, "no_sync", None) if i < len(pieces) - 1 else None
        with no_sync() if no_sync is not None else contextlib.nullcontext():
            with rt.autocast():
                logits = model(micro_images)  # [b, K], or [2b, K] for the dual head in training
            # §1.2: both streams of the dual head are supervised with the same labels.
            streams = logits.shape[0] // micro_targets.shape[0]
            loss = loss_fn(logits.float(), micro_targets.repeat(streams, 1))
            loss = loss * (micro_images.shape[0] / count)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        total += loss.detach()
    if grad_clip > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients (scaler.step then skips it)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total


def _check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLoss(
            f"the training loss became {loss.item()} in epoch {epoch + 1} (by iteration {step}); "
            "stopping. Lower train.lr or enable train.grad_clip"
        )


class NonFiniteLoss(MlicError):
    """Training diverged; the last good checkpoint is kept."""


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(
    model: nn.Module, dataset, cfg: Config, rt: Runtime, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid scores, targets and ignore masks for every image of `dataset`, in dataset order,
    each image counted exactly once even under DDP."""
    model.eval()
    compiler = rt.compiler or Compiler(False)
    net = compiler.wrap(model)  # compiled once per model and run, eager after a failure
    sampler = ShardSampler(len(dataset), rt.dist.rank, rt.dist.world_size)
    loader = _loader(dataset, cfg.train.eval_batch_size, sampler, cfg, rt, train=False)
    scores, targets, ignores = [], [], []
    for images, target, ignore, num_skipped in tqdm(
        loader, desc="evaluate", disable=not progress, leave=False, dynamic_ncols=True
    ):
        if num_skipped:
            raise MlicError("an image of the evaluation split could not be decoded")
        images = _images_to_device(images, rt, cfg.data)
        logits = compiler.run(net, _forward, images, rt)
        scores.append(torch.sigmoid(logits.float()))  # stays on the device: no sync per batch
        targets.append(target)
        ignores.append(ignore)
    indices = torch.tensor(sampler.indices, dtype=torch.long)
    num_classes = len(dataset.class_names)
    pieces = [
        torch.cat(x).cpu() if x else torch.empty(0, num_classes) for x in (scores, targets, ignores)
    ]
    return tuple(gather_by_index(indices, pieces, rt.dist))


def _forward(model: nn.Module, images: torch.Tensor, rt: Runtime) -> torch.Tensor:
    with rt.autocast():
        return model(images)


def evaluate(model: nn.Module, dataset, cfg: Config, rt: Runtime, progress: bool = False) -> dict:
    """The paper's mAP (eq. 3–5) and the companion metrics, in %."""
    scores, targets, ignore = predict(model, dataset, cfg, rt, progress=progress)
    return metrics_of(dataset, scores, targets, ignore)


def metrics_of(
    dataset, scores: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor
) -> dict[str, Any]:
    """Every metric of one split's scores: one definition for training and `mlic evaluate`."""
    metrics = compute_metrics(
        scores.numpy(),
        targets.numpy(),
        ignore=ignore.numpy().astype(bool),
        class_names=list(dataset.class_names),
    )
    return {**metrics, **_size_metrics(dataset, scores, targets, ignore)}


def _size_metrics(
    dataset, scores: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor
) -> dict[str, Any]:
    """{"map_by_size": ...} (mlic.metrics.map_by_size) where the dataset knows its objects'
    areas; {} for a dataset that does not. A key of every evaluation, so metrics.json carries
    it for whichever epoch and weights it reports."""
    areas = getattr(dataset, "largest_area_fraction", None)
    if areas is None:
        return {}
    return {
        "map_by_size": map_by_size(
            scores.numpy(), targets.numpy(), areas, ignore=ignore.numpy().astype(bool)
        )
    }


# --------------------------------------------------------------------------- fit


def fit(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train one configuration and write its run record; returns the final metrics.

    `resume=True` continues from `run_dir/checkpoints/last.pt` (the end of the last finished
    epoch); the configuration must match the one the run started with. A directory that holds
    any part of a run record is refused (before anything is written) unless `resume` applies
    or `overwrite=True`, which removes the old record first.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise MlicError("--resume and --overwrite exclude each other: continue or replace")
    rt = make_runtime(cfg)
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and rt.dist.is_main
    if rt.dist.is_main:
        check_new_run(run_dir, resume=resume, overwrite=overwrite)  # before the lock writes
    lock = run_lock(run_dir) if rt.dist.is_main else contextlib.nullcontext()
    with lock:
        if rt.dist.is_main:  # again under the lock: another run may have finished meanwhile
            check_new_run(run_dir, resume=resume, overwrite=overwrite)
            if overwrite:
                remove_record(run_dir)
        finished = _finished_run(cfg, run_dir, rt) if resume else None
        if finished is not None:
            return finished
        return _fit(cfg, run_dir, rt, resume=resume, progress=progress)


def _finished_run(cfg: Config, run_dir: Path, rt: Runtime) -> dict[str, Any] | None:
    """The metrics of `run_dir` if its record is complete (metrics.json says so) and of this
    configuration, else None. `--resume` of a finished run changes nothing (its metrics.json,
    wall_seconds and thresholds stay); only thresholds.json missing after a kill between the
    two is written, as the run's end would have."""
    metrics = read_metrics(run_dir)
    if metrics is None:
        return None
    saved = load_config(path=run_dir / "config.yaml").to_dict()
    if saved != cfg.to_dict():
        raise MlicError(
            f"{run_dir}: a finished run of another configuration "
            f"({_first_difference(saved, cfg.to_dict())}); nothing to resume: choose another "
            "--run-dir, or --overwrite to replace it"
        )
    if rt.dist.is_main:
        from mlic.thresholds import calibrate_after_training, describe, thresholds_path

        changed = "nothing changed"
        if not os.path.lexists(thresholds_path(run_dir)):
            record, path = calibrate_after_training(run_dir, rt)
            print(f"{describe(record)} -> {path}", flush=True)
            changed = f"only its missing {path.name} written"
        print(
            f"{run_dir}: finished already ({metrics.get('epochs')} epochs, metrics.json "
            f"complete); nothing to resume, {changed}",
            file=sys.stderr,
            flush=True,
        )
    return metrics


def _fit(cfg: Config, run_dir: Path, rt: Runtime, *, resume: bool, progress: bool) -> dict:
    last_path = run_dir / "checkpoints" / "last.pt"
    best_path = run_dir / "checkpoints" / "best.pt"
    state = _resume_state(cfg, run_dir, last_path) if resume else None
    if state is None and last_path.exists():
        raise MlicError(
            f"{run_dir}: holds a run already; pass --resume to continue it, --overwrite to "
            "replace it, or choose another --run-dir"
        )
    if rt.dist.is_main:
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        (run_dir / "metrics.json").unlink(missing_ok=True)

    seed_everything(cfg.train.seed)
    train_set = build_dataset(cfg.data, "train", uint8=True)
    if cfg.data.calibration_fraction > 0:  # held out for the thresholds (mlic/thresholds.py)
        train_set = without_holdout(train_set, cfg.data.calibration_fraction, cfg.train.seed)
    val_set = build_dataset(cfg.data, "val", uint8=True)
    if list(train_set.class_names) != list(val_set.class_names):
        raise MlicError(f"{cfg.data.resolved_root()}: train and val splits have different classes")
    require_labels(train_set.index, "train a model")  # before the first epoch, not after it
    require_labels(val_set.index, "evaluate a model")
    class_names = list(train_set.class_names)
    unseen = unseen_in_training(train_set.index, val_set.index)
    if unseen and rt.dist.is_main:
        print(
            f"warning: {len(unseen)} class(es) have positives in {cfg.data.split('val')} but "
            f"none in the images trained on: {', '.join(unseen[:5])}"
            + (", ..." if len(unseen) > 5 else ""),
            file=sys.stderr,
        )

    # A resumed run takes its weights from the checkpoint, not from ImageNet again.
    model_cfg = replace(cfg.model, pretrained=False, pretrained_file="") if state else cfg.model
    model = build_model_from_config(model_cfg, num_classes=len(class_names)).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ckpt = cfg.train.activation_checkpointing
    model.set_grad_checkpointing(backbone=ckpt in ("backbone", "all"), head=ckpt in ("head", "all"))
    per_rank_batch = cfg.train.batch_size // rt.dist.world_size
    _check_micro_batch(per_rank_batch, cfg.train.accumulation_steps, model.min_training_batch)
    sampler = EpochShuffleSampler(len(train_set), per_rank_batch, cfg.train.seed, rt.dist)
    train_loader = _loader(train_set, per_rank_batch, sampler, cfg, rt, train=True)
    steps_per_epoch = len(sampler) // per_rank_batch
    optimizer = build_optimizer(model, cfg, rt)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.amp_dtype == torch.float16 else None
    loss_fn = AsymmetricLoss(
        gamma_neg=cfg.loss.gamma_neg,
        gamma_pos=cfg.loss.gamma_pos,
        clip=cfg.loss.clip,
        eps=cfg.loss.eps,
    )

    history: list[dict[str, Any]] = []
    iterations: list[dict[str, Any]] = []
    start_epoch, best_map = 0, -math.inf
    wall_before = 0.0  # seconds of the sessions before this one (a resumed run)
    best: dict[str, Any] | None = None  # the best epoch's record (metrics.json "best")
    if state is not None:
        load_weights(last_path, model, state["model"])
    ema = build_ema(model, cfg)
    if state is not None:
        load_weights(last_path, ema.module, state["ema"])
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
            raise CheckpointError(
                f"{last_path}: the optimizer or scheduler state does not fit this run "
                f"({type(exc).__name__})"
            ) from None
        history, iterations = list(state["history"]), list(state.get("iterations") or [])
        start_epoch, best_map = int(state["epoch"]), float(state["best_map"])
        wall_before = _wall_before(state)
        best = state.get("best")
        if best is None:
            raise MlicError(
                f"{last_path}: written by an older mlic without the best-epoch record; "
                "it cannot be resumed, train the run again"
            )

    train_model: nn.Module = model
    if rt.dist.enabled:
        train_model = DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.cuda else None
        )

    wall_start = time.perf_counter()
    results: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        # Everything random in this epoch follows from (seed, epoch): resuming is exact.
        seed_everything(epoch_seed(cfg.train.seed, epoch))
        sampler.set_epoch(epoch)
        train_loader.generator.manual_seed(epoch_seed(cfg.train.seed, epoch) + 2)
        stats = train_one_epoch(
            train_model,
            loss_fn,
            train_loader,
            optimizer,
            scheduler,
            ema,
            model,
            epoch=epoch,
            cfg=cfg,
            rt=rt,
            scaler=scaler,
            progress=progress,
        )
        sync_buffers(model, rt.dist)
        sync_buffers(ema.module, rt.dist)
        results = {
            "model": evaluate(model, val_set, cfg, rt),
            "ema": evaluate(ema.module, val_set, cfg, rt),
        }
        row = {
            "epoch": epoch + 1,
            "train_loss": stats["train_loss"],
            "lr": stats["lr"],
            "map": results["model"]["map"],
            "map_ema": results["ema"]["map"],
            "seconds": stats["seconds"],
            "images_per_s": stats["images_per_s"],
            "skipped_images": stats["skipped_images"],
        }
        history.append(row)
        iterations.extend(stats["iterations"])
        which = _better(results)
        epoch_map = results[which]["map"]
        if rt.dist.is_main:
            _log_epoch(row, cfg)
            write_csv(run_dir / "history.csv", HISTORY_COLUMNS, history)
            if cfg.train.log_iteration_loss:
                write_csv(run_dir / "iterations.csv", ITERATION_COLUMNS, iterations)
            arch = dict(model.arch)
            common = {"arch": arch, "class_names": class_names, "config": cfg.to_dict()}
            improved = epoch_map > best_map
            best_map = max(best_map, epoch_map)
            if improved:  # Q2L main_mlc.py / ASL train.py: best epoch of max(model, EMA)
                best = _epoch_record(epoch + 1, which, results)
            if cfg.train.save_best and improved:
                weights = (ema.module if which == "ema" else model).state_dict()
                save_checkpoint(
                    best_path,
                    {
                        **common,
                        "epoch": epoch + 1,
                        "weights": which,
                        "map": epoch_map,
                        "model": weights,
                    },
                )
            save_checkpoint(
                last_path,
                {
                    **common,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "ema": ema.module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "history": history,
                    "iterations": iterations,
                    "best_map": best_map,
                    "best": best,
                    "wall_seconds": wall_before + time.perf_counter() - wall_start,
                },
            )
    if not results:  # resumed a run that had already finished: evaluate its last weights
        results = {
            "model": evaluate(model, val_set, cfg, rt),
            "ema": evaluate(ema.module, val_set, cfg, rt),
        }
    last = _epoch_record(cfg.train.epochs, _better(results), results)
    if best is None:  # only on a non-main rank, which does not track it
        best = last
    wall = wall_before + time.perf_counter() - wall_start
    metrics = _final_metrics(cfg, rt, best, last, history, wall)
    if rt.dist.is_main:
        write_json(run_dir / "metrics.json", metrics)
        from mlic.thresholds import calibrate_after_training, describe

        record, path = calibrate_after_training(run_dir, rt)
        print(f"{describe(record)} -> {path}", flush=True)
    return metrics


def _check_micro_batch(per_rank_batch: int, accumulation_steps: int, minimum: int) -> None:
    if per_rank_batch % accumulation_steps or per_rank_batch // accumulation_steps < minimum:
        raise MlicError(
            f"the batch of {per_rank_batch} images per process does not split into "
            f"train.accumulation_steps={accumulation_steps} micro-batches of >= {minimum} images"
        )


def execution_metrics(cfg: Config, rt: Runtime) -> dict[str, Any]:
    """How the run executed (metrics.json): compiled or eager (and why), the memory plan, and
    the batch each forward pass saw: the dual head's batch attention spans the micro-batch."""
    k = cfg.train.accumulation_steps
    per_rank = cfg.train.batch_size // rt.dist.world_size
    compiler = rt.compiler or Compiler(False)
    return {
        "compiled": compiler.compiled,
        "compile_fallback_reason": compiler.fallback_reason,
        "activation_checkpointing": cfg.train.activation_checkpointing,
        "accumulation_steps": k,
        "micro_batch_size": per_rank // k,
        "effective_batch_size": per_rank * rt.dist.world_size,
    }


def _wall_before(state: dict[str, Any]) -> float:
    """Wall seconds up to the checkpoint a run resumes from (its `wall_seconds`; a checkpoint of
    an older mlic has none: then the epochs' own seconds, a lower bound)."""
    wall = state.get("wall_seconds")
    if isinstance(wall, int | float) and not isinstance(wall, bool) and math.isfinite(wall):
        return max(float(wall), 0.0)
    return float(sum(row.get("seconds", 0.0) for row in state.get("history") or []))


def _resume_state(cfg: Config, run_dir: Path, last_path: Path) -> dict | None:
    if not last_path.exists():
        return None  # nothing to resume: start from scratch
    state = load_checkpoint(last_path)
    check_contents(last_path, state, resume=True)
    # As the present code resolves it: a key added since the checkpoint takes its default.
    saved = from_dict(state["config"], source=str(last_path)).to_dict()
    if saved != cfg.to_dict():
        diff = _first_difference(saved, cfg.to_dict())
        raise MlicError(
            f"{run_dir}: cannot resume with a different configuration ({diff}); "
            "use the same preset and overrides, or another --run-dir"
        )
    return state


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {a!r} then, {b!r} now"


def _log_epoch(row: dict[str, Any], cfg: Config) -> None:
    print(
        f"epoch {row['epoch']}/{cfg.train.epochs}  loss {row['train_loss']:.4f}  "
        f"mAP {row['map']:.2f}  mAP(EMA) {row['map_ema']:.2f}  "
        f"{row['images_per_s']:.1f} img/s  {row['seconds']:.1f} s",
        flush=True,
    )


def _better(results: dict[str, dict]) -> str:
    """Whose mAP is higher this epoch, "model" or "ema" (a tie goes to the model)."""
    return "ema" if results["ema"]["map"] > results["model"]["map"] else "model"


def _epoch_record(epoch: int, which: str, results: dict[str, dict]) -> dict[str, Any]:
    """One epoch's metrics of its better weights (model or EMA), for metrics.json's
    "best" and "last": epoch, weights, map_model, map_ema and every metric of `which`."""
    return {
        **results[which],
        "epoch": epoch,
        "weights": which,
        "map_model": results["model"]["map"],
        "map_ema": results["ema"]["map"],
    }


def _final_metrics(
    cfg: Config,
    rt: Runtime,
    best: dict[str, Any],
    last: dict[str, Any],
    history: list[dict],
    wall: float,
) -> dict[str, Any]:
    # Q2L (main_mlc.py) and ASL (train.py) evaluate the model and its EMA every epoch and report
    # the best epoch of the better of the two; the top level is that epoch (as best.pt holds
    # it), "best" and "last" hold both epochs in full.
    train_seconds = sum(r["seconds"] for r in history)
    train_images = sum(r["images_per_s"] * r["seconds"] for r in history)
    top = {k: v for k, v in best.items() if k != "epoch"}
    return {
        **top,
        "best": best,
        "last": last,
        "dataset": cfg.data.dataset,
        "embedded": cfg.data.is_embedded,
        "split": cfg.data.split("val"),
        "image_size": cfg.data.image_size,
        "backbone": cfg.model.backbone,
        "head": cfg.model.head,
        "epochs": cfg.train.epochs,
        "seed": cfg.train.seed,
        "device": _device_name(rt),
        "world_size": rt.dist.world_size,
        "versions": software_versions(),
        "git_commit": git_commit(),
        "wall_seconds": wall,
        "train_seconds": train_seconds,
        "train_images_per_s": train_images / train_seconds if train_seconds else 0.0,
        **execution_metrics(cfg, rt),
        "complete": True,
    }


def _device_name(rt: Runtime) -> str:
    if rt.cuda:
        return torch.cuda.get_device_name(rt.device)
    return f"cpu ({torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------- evaluate a checkpoint


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


def evaluate_checkpoint(
    path: str | Path,
    *,
    split: str | None = None,
    data_root: str | None = None,
    device: str = "auto",
    max_images: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Metrics of a run directory's best checkpoint (or a checkpoint file) on a split; with the
    run's tuned per-class thresholds (thresholds.json) also the metrics at those, under `tuned`.
    """
    data: dict[str, Any] = {}
    if split:
        data["val_split"] = split
    if data_root:
        data["root"] = data_root
    if max_images:
        data["max_val_images"] = max_images
    trained = load_trained(path, device=device, data=data)
    cfg, rt, ckpt_path = trained.cfg, trained.rt, trained.checkpoint
    dataset = build_dataset(cfg.data, "val", uint8=True)
    require_labels(dataset.index, "evaluate a model")
    if list(dataset.class_names) != trained.class_names:
        raise CheckpointError(
            f"{ckpt_path}: the checkpoint's {len(trained.class_names)} classes differ from the "
            f"{len(dataset.class_names)} classes of {cfg.data.resolved_root()}"
        )
    if progress is None:
        progress = sys.stderr.isatty()
    from mlic.thresholds import tuned_metrics

    start = time.perf_counter()
    scores, targets, ignore = predict(trained.model, dataset, cfg, rt, progress=progress)
    seconds = time.perf_counter() - start
    metrics = metrics_of(dataset, scores, targets, ignore)
    tuned = tuned_metrics(trained, scores, targets, ignore, split=cfg.data.split("val"))
    return {
        **metrics,
        **({"tuned": tuned} if tuned else {}),
        "checkpoint": str(ckpt_path),
        "weights": trained.weights,
        "epoch": trained.epoch,  # best.pt: the best epoch (metrics.json "best")
        "dataset": cfg.data.dataset,
        "split": cfg.data.split("val"),
        "image_size": cfg.data.image_size,
        "device": _device_name(rt),
        "compiled": rt.compiler.compiled if rt.compiler else False,
        "seconds": seconds,
        "images_per_s": metrics["num_images"] / seconds if seconds else 0.0,
    }
