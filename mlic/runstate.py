"""The state of a run between epochs and sessions: what last.pt and best.pt hold, and how a
resumed run gets it back.

`RunParts` are the objects a run trains with (model, EMA, optimizer, scheduler, ...), `RunState`
the values it carries from epoch to epoch (history, best epoch, wall time). last.pt saves both,
so that the run resumed from it is the run that never stopped; best.pt holds the best epoch's
better weights, as `load_trained` (mlic/inference.py) reads them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mlic.checkpoint import check_contents, load_checkpoint, load_weights
from mlic.config import Config, from_dict
from mlic.ema import ForeachEma
from mlic.errors import CheckpointError, MlicError
from mlic.loaders import EpochShuffleSampler


@dataclass
class RunState:
    """What a run carries from epoch to epoch besides the weights; last.pt saves it."""

    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)  # the rows of history.csv
    iterations: list[dict[str, Any]] = field(default_factory=list)  # of iterations.csv
    best_map: float = -math.inf
    best: dict[str, Any] | None = None  # the best epoch's record (metrics.json "best")
    wall_before: float = 0.0  # seconds of the sessions before this one (a resumed run)
    started: float = 0.0  # time.perf_counter() when this session's first epoch began

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started


@dataclass
class RunParts:
    """The objects one run trains with, built from its configuration (restored on resume)."""

    model: nn.Module
    net: nn.Module  # what trains: the model, wrapped in DDP under torchrun
    ema: ForeachEma
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 only
    loss_fn: nn.Module
    sampler: EpochShuffleSampler
    loader: DataLoader
    val_set: Dataset
    class_names: list[str]


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_common(cfg: Config, parts: RunParts) -> dict[str, Any]:
    """What every checkpoint carries to be loaded alone: architecture, classes, configuration."""
    return {
        "arch": dict(parts.model.arch),
        "class_names": parts.class_names,
        "config": cfg.to_dict(),
    }


def best_checkpoint(cfg: Config, parts: RunParts, best: dict[str, Any]) -> dict[str, Any]:
    """best.pt: the best epoch's better weights (model or EMA), what `load_trained` loads."""
    weights = parts.ema.module if best["weights"] == "ema" else parts.model
    return {
        **_checkpoint_common(cfg, parts),
        "epoch": best["epoch"],
        "weights": best["weights"],
        "map": best["map"],
        "model": weights.state_dict(),
    }


def last_checkpoint(cfg: Config, parts: RunParts, run: RunState) -> dict[str, Any]:
    """last.pt: everything the next epoch needs, so that a resumed run is the same run."""
    return {
        **_checkpoint_common(cfg, parts),
        "epoch": run.epoch,
        "model": parts.model.state_dict(),
        "ema": parts.ema.module.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler is not None else {},
        "history": run.history,
        "iterations": run.iterations,
        "best_map": run.best_map,
        "best": run.best,
        "wall_seconds": run.wall_seconds(),
    }


# --------------------------------------------------------------------------- resume


def resume_state(cfg: Config, run_dir: Path, last_path: Path) -> dict[str, Any] | None:
    """last.pt's contents to resume from (None without one), checked to be complete and of
    this very configuration."""
    if not last_path.exists():
        return None  # nothing to resume: start from scratch
    state = load_checkpoint(last_path)
    check_contents(last_path, state, resume=True)
    # As the present code resolves it: a key added since the checkpoint takes its default.
    saved = from_dict(state["config"], source=str(last_path)).to_dict()
    if saved != cfg.to_dict():
        diff = first_difference(saved, cfg.to_dict())
        raise MlicError(
            f"{run_dir}: cannot resume with a different configuration ({diff}); "
            "use the same preset and overrides, or another --run-dir"
        )
    return state


def restore(
    state: dict[str, Any],
    last_path: Path,
    ema: ForeachEma,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> RunState:
    """Load last.pt's EMA, optimizer, scheduler and scaler state; return its RunState."""
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
    run = RunState(
        epoch=int(state["epoch"]),
        history=list(state["history"]),
        iterations=list(state.get("iterations") or []),
        best_map=float(state["best_map"]),
        best=state.get("best"),
        wall_before=wall_seconds_before(state),
    )
    if run.best is None:
        raise MlicError(
            f"{last_path}: written by an older mlic without the best-epoch record; "
            "it cannot be resumed, train the run again"
        )
    return run


def wall_seconds_before(state: dict[str, Any]) -> float:
    """Wall seconds up to the checkpoint a run resumes from (its `wall_seconds`; a checkpoint of
    an older mlic has none: then the epochs' own seconds, a lower bound)."""
    wall = state.get("wall_seconds")
    if isinstance(wall, int | float) and not isinstance(wall, bool) and math.isfinite(wall):
        return max(float(wall), 0.0)
    return float(sum(row.get("seconds", 0.0) for row in state.get("history") or []))


def first_difference(a: Any, b: Any, prefix: str = "") -> str:
    """The first key (dotted) where two configurations differ, with both values, for the
    message that refuses to resume or continue a run of another configuration."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {a!r} then, {b!r} now"
