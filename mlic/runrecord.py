"""The run record: the contract between training and the report (DESIGN.md, "A run record").

`<run_dir>/config.yaml`, `history.csv`, `iterations.csv` (optional), `metrics.json` and
`checkpoints/{last,best}.pt`. Every file is written atomically (temp file + rename), so a
killed run never leaves a half-written record behind.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlic.errors import DataError, MlicError, one_line

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "lr",
    "map",
    "map_ema",
    "seconds",
    "images_per_s",
    "skipped_images",
]
ITERATION_COLUMNS = ["epoch", "iteration", "loss", "lr"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Refuse a second process writing the same run directory (an advisory lock on .lock)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / ".lock"
    handle = open(lock_path, "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise MlicError(
            f"{run_dir}: another process is writing this run directory (lock {lock_path})"
        ) from None
    try:
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def git_commit(cwd: Path | None = None) -> str:
    """The commit of the code that ran, with "-dirty" when the tree had changes; "" outside git."""
    where = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return sha + ("-dirty" if dirty else "")


def software_versions() -> dict[str, str]:
    import numpy
    import timm
    import torch
    import torchvision

    import mlic

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "mlic": mlic.__version__,
        "cuda": torch.version.cuda or "",
    }


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The finished run's metrics, or None when there are none or the run has not completed.

    The one reader of metrics.json (reproduce's skip check and the report both use it): a file
    that is there but does not parse is a DataError naming it, never a silent retrain.
    """
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({one_line(exc)})") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(metrics).__name__}")
    return metrics if metrics.get("complete") is True else None
