"""Where a command's `--out` may write: never over its own input, a run record it does not own,
or (without `--force`) any other file that is already there.

`mlic predict`, `calibrate`, `export` and `data to-csv` check their `--out` here before doing
any work, so a typo (`--out RUN/metrics.json`, `--out photo.jpg`) is one line naming the file
rather than a destroyed file and exit status 0.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from mlic.errors import MlicError

# The files of a run record (mlic/runrecord.py) that only `mlic train` writes, plus the
# thresholds that only `mlic calibrate` (or training's end) writes; `checkpoints/` as a whole.
RUN_FILES = ("config.yaml", "history.csv", "iterations.csv", "metrics.json", "thresholds.json")


class OutError(MlicError):
    """An `--out` that would replace an input, a run record's file or (without --force) a file
    that is already there."""


def _key(path: str | Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def _is_run_dir(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() or (folder / "checkpoints").is_dir()


def run_record_file(path: str | Path) -> Path | None:
    """The run directory whose record `path` is part of (a run file, or anything in its
    checkpoints/), else None. Links are followed: what would be written is what counts."""
    real = Path(os.path.realpath(path))
    if real.name in RUN_FILES and _is_run_dir(real.parent):
        return real.parent
    if real.parent.name == "checkpoints" and _is_run_dir(real.parent.parent):
        return real.parent.parent
    return None


def check_out(
    out: str | Path,
    *,
    inputs: Iterable[str | Path] = (),
    owned: Iterable[str | Path] = (),
    force: bool = False,
    flag: str = "--out",
) -> Path:
    """Refuse `out` (one OutError naming it) when it is a folder, one of `inputs` (also through
    a link or a hard link; a folder among them stands for every file inside it), a file of a
    run record not listed in `owned` (the command's own default outputs), or an existing file
    without `force`. Returns `out` as a Path."""
    path = Path(out)
    if path.is_dir():
        raise OutError(f"{flag} {path}: is a folder; give a file name")
    key = _key(path)
    owned_keys = {_key(p) for p in owned}
    try:
        here = os.stat(path)
    except OSError:
        here = None
    for item in inputs:
        # The same file: the same inode (also through a link or a hard link), or any file inside
        # an input folder.
        try:
            st = os.stat(item)
        except OSError:
            continue  # not there: nothing of it to destroy
        if stat.S_ISDIR(st.st_mode):
            same = key.startswith(_key(item).rstrip(os.sep) + os.sep)
        else:
            same = here is not None and os.path.samestat(here, st)
        if same:
            raise OutError(f"{flag} {path}: is an input of this command; choose another file")
    if key in owned_keys:
        return path
    run_dir = run_record_file(path)
    if run_dir is not None:
        raise OutError(
            f"{flag} {path}: belongs to the run record in {run_dir}, which this command does "
            "not write; choose another file"
        )
    if os.path.lexists(path) and not force:
        raise OutError(f"{flag} {path}: exists already; pass --force to replace it")
    return path
