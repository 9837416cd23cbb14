"""The dataset archives' bytes on disk: sizes in words, the free space for them, and a progress
bar over them (shared by mlic/data/fetch.py, mlic/data/unpack.py and mlic/data/download.py).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

CHUNK = 1 << 20  # bytes read, hashed or written at a time


def human_size(n: int | None) -> str:
    """Bytes in binary units with one decimal ('12.6 GiB'); None is 'an unknown size'."""
    if n is None:
        return "an unknown size"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def existing_ancestor(path: Path) -> Path:
    """`path`, or its nearest parent that exists: where a folder not yet made will live."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system that holds (or will hold) `path`; None when unknown."""
    try:
        return shutil.disk_usage(existing_ancestor(path)).free
    except OSError:
        return None


def same_filesystem(a: Path, b: Path) -> bool:
    """Whether `a` and `b` (or the folders they will be made in) share a file system; True when
    that cannot be told, so that a space check counts both on one disk (the safe side)."""
    try:
        return os.stat(existing_ancestor(a)).st_dev == os.stat(existing_ancestor(b)).st_dev
    except OSError:
        return True


def progress_bar(
    total: int | None, desc: str, enabled: bool, *, initial: int = 0, unit: str = "B"
) -> Any:
    """A tqdm bar on stderr (bytes in KiB/MiB/GiB, or a count of `unit`); does nothing when not
    `enabled` (output that is not a terminal)."""
    byte_units = unit == "B"
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        unit_scale=byte_units,
        unit_divisor=1024 if byte_units else 1000,
        disable=not enabled,
        file=sys.stderr,
        mininterval=0.5,
        leave=False,
    )
