"""Checkpoints: written atomically, loaded with `weights_only=True`, checked against the
architecture before any weight is copied."""

from __future__ import annotations

import io
import math
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from mlic.errors import CheckpointError
from mlic.runrecord import atomic_write_bytes

FORMAT = "mlic-checkpoint-1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise to memory first, then rename into place: a kill never leaves a torn file."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load on the CPU whatever device wrote it; refuse anything that is not our checkpoint."""
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such checkpoint file"
        raise CheckpointError(f"{path}: {what}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": our line says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # untrusted bytes: torch.load raises many types (KeyError on text)
        raise CheckpointError(f"{path}: {describe_load_error(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mlic checkpoint (expected format {FORMAT!r})")
    return state


def describe_load_error(exc: BaseException) -> str:
    """Our own words for a failed weights-only load. PyTorch's text spans lines, carries
    terminal codes and advises retrying with weights_only=False, which would run whatever code
    the file holds: we never suggest that."""
    if isinstance(exc, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]{1,80})", str(exc))
        if found:
            return (
                f"refused: the file asks to import Python code ({found.group(1)}) to load, which a "
                "checkpoint never needs (it may be malicious); mlic loads tensors only"
            )
    if isinstance(exc, EOFError):
        return "not a loadable checkpoint (the file is empty or truncated)"
    return "not a loadable checkpoint (not a PyTorch file, or truncated or corrupt)"


# What a checkpoint must hold, per use (`evaluate` reads the first group, `--resume` both).
_TENSOR_DICT = "a mapping of parameter names to tensors"
_EVALUATE = {
    "config": (dict, "a configuration mapping"),
    "class_names": (list, "a list of class names"),
    "arch": (dict, "a mapping of architecture arguments"),
    "model": (dict, _TENSOR_DICT),
}
_RESUME = {
    "ema": (dict, _TENSOR_DICT),
    "optimizer": (dict, "an optimizer state"),
    "scheduler": (dict, "a scheduler state"),
    "history": (list, "a list of epoch rows"),
    "epoch": (int, "an epoch number"),
    "best_map": ((int, float), "a number"),
}


def check_contents(path: Path, state: dict[str, Any], *, resume: bool = False) -> None:
    """Refuse a checkpoint (right format tag, wrong contents) before any of it is used."""
    wanted = {**_EVALUATE, **(_RESUME if resume else {})}
    for key, (kind, what) in wanted.items():
        value = state.get(key)
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r} ({what})")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{path}: checkpoint's {key!r} is not {what}")
    for section in ("data", "model", "train"):  # the engine writes every section out
        if not isinstance(state["config"].get(section), dict):
            raise CheckpointError(f"{path}: checkpoint's config lacks the {section!r} section")
    if not state["class_names"] or not all(isinstance(n, str) for n in state["class_names"]):
        raise CheckpointError(f"{path}: checkpoint's 'class_names' is not a list of class names")
    for key in ("model", "ema") if resume else ("model",):
        if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state[key].items()):
            raise CheckpointError(f"{path}: checkpoint's {key!r} is not {_TENSOR_DICT}")
    if resume:
        if not all(isinstance(row, dict) for row in state["history"]):
            raise CheckpointError(f"{path}: checkpoint's 'history' is not a list of epoch rows")
        if state["epoch"] < 0 or math.isnan(state["best_map"]):
            raise CheckpointError(f"{path}: checkpoint's epoch or best_map is out of range")


def check_architecture(path: Path, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    """A checkpoint of another architecture is refused with the first differing argument."""
    keys = sorted(set(saved) | set(expected))
    for key in keys:
        if saved.get(key) != expected.get(key):
            raise CheckpointError(
                f"{path}: checkpoint is for a different architecture "
                f"({key}={saved.get(key)!r} in the checkpoint, {expected.get(key)!r} expected)"
            )


def load_weights(
    path: Path, module: torch.nn.Module, weights: dict[str, torch.Tensor], what: str = "the model"
) -> None:
    """Strict load; a mismatch is a one-line CheckpointError rather than PyTorch's wall of keys."""
    try:
        result = module.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches are raised even with strict=False
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise CheckpointError(f"{path}: weights do not fit {what}: {detail}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[0]})"
        )
    if problems:
        raise CheckpointError(f"{path}: weights do not fit {what}: {'; '.join(problems)}")
