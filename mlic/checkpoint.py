"""Checkpoints: written atomically, loaded with `weights_only=True`, checked against the
architecture before any weight is copied."""

from __future__ import annotations

import io
import pickle
import zipfile
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
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({first_line})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mlic checkpoint (expected format {FORMAT!r})")
    return state


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
