"""`fit`: one configuration trained into its run record, from the start or from its last epoch.

The run directory gets config.yaml first; after every epoch history.csv (iterations.csv with
`train.log_iteration_loss`), checkpoints/last.pt and, when the epoch is the best so far,
checkpoints/best.pt; at the end metrics.json and thresholds.json. last.pt holds all the next
epoch needs (mlic/runstate.py), and every epoch reseeds from (seed, epoch), so `--resume`
continues exactly where the last finished epoch ended.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from mlic.checkpoint import load_weights, save_checkpoint
from mlic.compilation import Compiler
from mlic.config import Config, load_config
from mlic.data import build_dataset
from mlic.data.checks import require_labels, unseen_in_training
from mlic.data.embedded import read_marker
from mlic.data.holdout import without_holdout
from mlic.distributed import sync_buffers
from mlic.engine import evaluate, train_one_epoch
from mlic.errors import MlicError
from mlic.loaders import EpochShuffleSampler, build_loader
from mlic.losses import AsymmetricLoss
from mlic.models import build_model_from_config
from mlic.optim import build_ema, build_optimizer, build_scheduler
from mlic.runrecord import (
    GENERATOR_KEY,
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
from mlic.runstate import (
    RunParts,
    RunState,
    best_checkpoint,
    first_difference,
    last_checkpoint,
    restore,
    resume_state,
)
from mlic.runtime import Runtime, device_name, epoch_seed, make_runtime, seed_everything
from mlic.thresholds import calibrate_after_training, describe, thresholds_path


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


def _fit(cfg: Config, run_dir: Path, rt: Runtime, *, resume: bool, progress: bool) -> dict:
    last_path = run_dir / "checkpoints" / "last.pt"
    best_path = run_dir / "checkpoints" / "best.pt"
    state = resume_state(cfg, run_dir, last_path) if resume else None
    if state is None and last_path.exists():
        raise MlicError(
            f"{run_dir}: holds a run already; pass --resume to continue it, --overwrite to "
            "replace it, or choose another --run-dir"
        )
    if rt.dist.is_main:
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        (run_dir / "metrics.json").unlink(missing_ok=True)
    parts, run = _build(cfg, rt, state, last_path)

    run.started = time.perf_counter()
    results: dict[str, Any] = {}
    for epoch in range(run.epoch, cfg.train.epochs):
        # Everything random in this epoch follows from (seed, epoch): resuming is exact.
        seed_everything(epoch_seed(cfg.train.seed, epoch))
        parts.sampler.set_epoch(epoch)
        parts.loader.generator.manual_seed(epoch_seed(cfg.train.seed, epoch) + 2)
        stats = train_one_epoch(
            parts.net, parts.loss_fn, parts.loader, parts.optimizer, parts.scheduler, parts.ema,
            parts.model, epoch=epoch, cfg=cfg, rt=rt, scaler=parts.scaler, progress=progress,
        )  # fmt: skip
        sync_buffers(parts.model, rt.dist)
        sync_buffers(parts.ema.module, rt.dist)
        results = _evaluate_both(parts, cfg, rt)
        row = _history_row(epoch, stats, results)
        run.epoch = epoch + 1
        run.history.append(row)
        run.iterations.extend(stats["iterations"])
        if rt.dist.is_main:
            which = _better(results)
            improved = results[which]["map"] > run.best_map
            if improved:  # Q2L main_mlc.py / ASL train.py: best epoch of max(model, EMA)
                run.best_map = results[which]["map"]
                run.best = _epoch_record(run.epoch, which, results)
            _log_epoch(row, cfg)
            write_csv(run_dir / "history.csv", HISTORY_COLUMNS, run.history)
            if cfg.train.log_iteration_loss:
                write_csv(run_dir / "iterations.csv", ITERATION_COLUMNS, run.iterations)
            if cfg.train.save_best and improved:
                save_checkpoint(best_path, best_checkpoint(cfg, parts, run.best))
            save_checkpoint(last_path, last_checkpoint(cfg, parts, run))
    if not results:  # resumed a run that had already finished: evaluate its last weights
        results = _evaluate_both(parts, cfg, rt)
    last = _epoch_record(cfg.train.epochs, _better(results), results)
    best = run.best if run.best is not None else last  # None only on a rank that does not track
    metrics = _final_metrics(cfg, rt, best, last, run.history, run.wall_seconds())
    if rt.dist.is_main:
        write_json(run_dir / "metrics.json", metrics)
        record, path = calibrate_after_training(run_dir, rt)
        print(f"{describe(record)} -> {path}", flush=True)
    return metrics


# --------------------------------------------------------------------------- set-up


def _build(
    cfg: Config, rt: Runtime, state: dict[str, Any] | None, last_path: Path
) -> tuple[RunParts, RunState]:
    """The run's data, model, optimizer and state: fresh, or restored from last.pt (`state`)."""
    seed_everything(cfg.train.seed)
    train_set, val_set = _datasets(cfg, rt)
    # A resumed run takes its weights from the checkpoint, not from ImageNet again.
    model_cfg = replace(cfg.model, pretrained=False, pretrained_file="") if state else cfg.model
    model = build_model_from_config(model_cfg, num_classes=len(train_set.class_names))
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ckpt = cfg.train.activation_checkpointing
    model.set_grad_checkpointing(backbone=ckpt in ("backbone", "all"), head=ckpt in ("head", "all"))
    per_rank_batch = cfg.train.batch_size // rt.dist.world_size
    _check_micro_batch(per_rank_batch, cfg.train.accumulation_steps, model.min_training_batch)
    sampler = EpochShuffleSampler(len(train_set), per_rank_batch, cfg.train.seed, rt.dist)
    loader = build_loader(train_set, per_rank_batch, sampler, cfg, rt, train=True)
    optimizer = build_optimizer(model, cfg, rt)
    scheduler = build_scheduler(optimizer, cfg, len(sampler) // per_rank_batch)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.amp_dtype == torch.float16 else None
    loss_fn = AsymmetricLoss(
        gamma_neg=cfg.loss.gamma_neg,
        gamma_pos=cfg.loss.gamma_pos,
        clip=cfg.loss.clip,
        eps=cfg.loss.eps,
    )
    if state is not None:
        load_weights(last_path, model, state["model"])
    ema = build_ema(model, cfg)  # a copy of the weights the run starts from
    run = RunState()
    if state is not None:
        run = restore(state, last_path, ema, optimizer, scheduler, scaler)
    net: nn.Module = model
    if rt.dist.enabled:
        net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.cuda else None)
    parts = RunParts(
        model, net, ema, optimizer, scheduler, scaler, loss_fn, sampler, loader, val_set,
        list(train_set.class_names),
    )  # fmt: skip
    return parts, run


def _datasets(cfg: Config, rt: Runtime) -> tuple[Dataset, Dataset]:
    """(training set without any calibration hold-out, validation set), both labelled and of
    the same classes; a class with validation positives but no training ones is warned about."""
    train_set = build_dataset(cfg.data, "train", uint8=True)
    if cfg.data.calibration_fraction > 0:  # held out for the thresholds (mlic/thresholds.py)
        train_set = without_holdout(train_set, cfg.data.calibration_fraction, cfg.train.seed)
    val_set = build_dataset(cfg.data, "val", uint8=True)
    if list(train_set.class_names) != list(val_set.class_names):
        raise MlicError(f"{cfg.data.resolved_root()}: train and val splits have different classes")
    require_labels(train_set.index, "train a model")  # before the first epoch, not after it
    require_labels(val_set.index, "evaluate a model")
    unseen = unseen_in_training(train_set.index, val_set.index)
    if unseen and rt.dist.is_main:
        print(
            f"warning: {len(unseen)} class(es) have positives in {cfg.data.split('val')} but "
            f"none in the images trained on: {', '.join(unseen[:5])}"
            + (", ..." if len(unseen) > 5 else ""),
            file=sys.stderr,
        )
    return train_set, val_set


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
            f"({first_difference(saved, cfg.to_dict())}); nothing to resume: choose another "
            "--run-dir, or --overwrite to replace it"
        )
    if rt.dist.is_main:
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


def _check_micro_batch(per_rank_batch: int, accumulation_steps: int, minimum: int) -> None:
    if per_rank_batch % accumulation_steps or per_rank_batch // accumulation_steps < minimum:
        raise MlicError(
            f"the batch of {per_rank_batch} images per process does not split into "
            f"train.accumulation_steps={accumulation_steps} micro-batches of >= {minimum} images"
        )


# --------------------------------------------------------------------------- each epoch's record


def _evaluate_both(parts: RunParts, cfg: Config, rt: Runtime) -> dict[str, dict]:
    """The epoch's metrics of the model and of its EMA on the validation split."""
    return {
        "model": evaluate(parts.model, parts.val_set, cfg, rt),
        "ema": evaluate(parts.ema.module, parts.val_set, cfg, rt),
    }


def _history_row(epoch: int, stats: dict[str, Any], results: dict[str, dict]) -> dict[str, Any]:
    """The epoch's row of history.csv (HISTORY_COLUMNS)."""
    return {
        "epoch": epoch + 1,
        "train_loss": stats["train_loss"],
        "lr": stats["lr"],
        "map": results["model"]["map"],
        "map_ema": results["ema"]["map"],
        "seconds": stats["seconds"],
        "images_per_s": stats["images_per_s"],
        "skipped_images": stats["skipped_images"],
    }


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


# --------------------------------------------------------------------------- metrics.json


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
        # The CPU threads torch computed with: on the CPU the bits of a result depend on it, so
        # a run is repeated bit for bit with the same count (`mlic reproduce --jobs` lowers it).
        "cpu_threads": torch.get_num_threads(),
    }


def _generator_version(cfg: Config) -> int | None:
    """The version in the embedded data's marker (what this run trained on); None otherwise."""
    if not cfg.data.is_embedded:
        return None
    marker = read_marker(Path(cfg.data.embedded_root)) or {}
    return marker.get("version")


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
        GENERATOR_KEY: _generator_version(cfg),
        "split": cfg.data.split("val"),
        "image_size": cfg.data.image_size,
        "backbone": cfg.model.backbone,
        "head": cfg.model.head,
        "epochs": cfg.train.epochs,
        "seed": cfg.train.seed,
        "device": device_name(rt),
        "world_size": rt.dist.world_size,
        "versions": software_versions(),
        "git_commit": git_commit(),
        "wall_seconds": wall,
        "train_seconds": train_seconds,
        "train_images_per_s": train_images / train_seconds if train_seconds else 0.0,
        **execution_metrics(cfg, rt),
        "complete": True,
    }
