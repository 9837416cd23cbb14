"""Training and evaluation: `train_one_epoch` and `evaluate`, the two loops a run alternates.

One loop for the CPU and the GPU. On CUDA it runs under bf16 autocast with fused AdamW, a
compiled model (eager if compilation fails) and pinned, non-blocking copies (mlic/runtime.py,
mlic/loaders.py); activation checkpointing and gradient accumulation fit the model to smaller
cards. Everything random in an epoch follows from (seed, epoch), which `fit` (mlic/fit.py) seeds,
so a run resumed from the checkpoint of epoch e is bit-identical to one that never stopped.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm  # plain bars: notebooks turn them off (not a terminal)

from mlic.compilation import Compiler
from mlic.config import Config
from mlic.data import cutmix
from mlic.distributed import all_reduce_sum
from mlic.errors import MlicError
from mlic.inference import predict_dataset
from mlic.loaders import images_to_device
from mlic.metrics import compute_metrics, map_by_size
from mlic.runtime import Runtime, epoch_seed

LOG_EVERY = 20  # iterations between host syncs for the progress bar and the finiteness check


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
        images = images_to_device(images, rt, cfg.data)
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


def evaluate(
    model: nn.Module, dataset: Dataset, cfg: Config, rt: Runtime, progress: bool = False
) -> dict[str, Any]:
    """The paper's mAP (eq. 3–5) and the companion metrics, in %."""
    scores, targets, ignore = predict_dataset(model, dataset, cfg, rt, progress=progress)
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
