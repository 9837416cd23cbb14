"""The run record: the contract between training and the report (docs/model.md, "The run record").

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
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlic.errors import DataError, MlicError, OutputError
from mlic.safeload import load_json

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
MAX_METRICS_BYTES = 16 << 20  # a metrics.json is a few KB


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a temporary file next to `path`, fsync, rename: a reader (or a kill) never sees half
    a file. The file gets the user's umask (mkstemp would make it 0600). A failure (read-only or
    full file system, no permission) is one OutputError; the old file is left intact."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None


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
    """Refuse a second process writing the same run directory (an advisory lock on .lock).

    The file is opened without truncating it and rewritten only once the lock is ours, so a
    refused process leaves the holder's PID there for the user to read."""
    lock_path = run_dir / ".lock"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise OutputError(
            f"{lock_path}: cannot write ({exc.strerror or type(exc).__name__})"
        ) from None
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise MlicError(
            f"{run_dir}: another process is writing this run directory (lock {lock_path})"
        ) from None
    try:
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


# Any of these makes a directory a run record that a new run must not silently replace.
RECORD_PARTS = ("config.yaml", "history.csv", "iterations.csv", "metrics.json", "checkpoints")


def record_parts(run_dir: Path) -> list[str]:
    """The parts of a run record that `run_dir` holds (empty for a new directory)."""
    return [name for name in RECORD_PARTS if os.path.lexists(Path(run_dir) / name)]


def check_new_run(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a directory that holds any part of a run record, unless the user
    asked to resume it (there is a checkpoints/last.pt, or only the config.yaml of a start that
    never finished an epoch) or to overwrite it. Reads only: called before anything is written.
    """
    parts = record_parts(run_dir)
    if not parts or overwrite:
        return
    held = ", ".join(parts)
    if resume:
        if (Path(run_dir) / "checkpoints" / "last.pt").is_file() or parts == ["config.yaml"]:
            return
        raise MlicError(
            f"{run_dir}: holds a run record ({held}) but no checkpoints/last.pt to resume from; "
            "pass --overwrite to replace it or choose another --run-dir"
        )
    raise MlicError(
        f"{run_dir}: holds a run record already ({held}); pass --resume to continue it, "
        "--overwrite to replace it, or choose another --run-dir"
    )


def remove_record(run_dir: Path) -> None:
    """Remove the run record's files (what --overwrite replaces); anything else is kept."""
    run_dir = Path(run_dir)
    try:
        for name in RECORD_PARTS:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif os.path.lexists(path):
                path.unlink()
    except OSError as exc:
        raise OutputError(f"{run_dir}: cannot remove the old run record ({exc.strerror})") from None


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
    metrics = load_json(path, max_bytes=MAX_METRICS_BYTES)
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(metrics).__name__}")
    return metrics if metrics.get("complete") is True else None


# The metrics.json key holding the embedded generator's version a run was trained on (None
# for other data): the configuration cannot say it, since the generator lives in the code.
GENERATOR_KEY = "embedded_generator"


def stale_data(metrics: dict[str, Any]) -> tuple[Any, int] | None:
    """(recorded, current) generator versions when an embedded run was trained on data the
    present generator no longer makes (or the record predates the key); None otherwise."""
    from mlic.data.embedded import GENERATOR_VERSION  # the data package imports PIL: lazily

    if metrics.get("embedded") is not True:
        return None
    recorded = metrics.get(GENERATOR_KEY)
    return None if recorded == GENERATOR_VERSION else (recorded, GENERATOR_VERSION)
