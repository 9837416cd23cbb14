"""`mlic data coco|voc --root DIR [--download]`: fetch, verify and unpack the paper's datasets
into the layout the presets read (<root>/{annotations,train2014,val2014} for COCO,
<root>/VOC2007 for VOC), the archives listed in mlic/data/sources.py.

This module decides what happens to each archive; the work is done elsewhere:
- mlic/data/fetch.py downloads (resumable, with HTTP Range) and checks size and MD5, renaming
  a mismatch `<archive>.bad`;
- mlic/data/unpack.py unpacks safely (unsafe members, zip bombs and a short disk refused before
  the first file is written) and checks the layout.

`<root>/.mlic-data/<archive>.json` records what an archive unpacked to; a rerun skips an
archive whose record is there and whose files all still exist. Every failure a user can act on
(no network, HTTP 404, a checksum mismatch, a full disk, an unsafe archive) is one line naming
the file or URL.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from mlic.data.disk import existing_ancestor, free_bytes, human_size, same_filesystem
from mlic.data.fetch import fetch, part_path, verify
from mlic.data.sources import Archive, archives
from mlic.data.unpack import check_supported, unpack
from mlic.errors import DataError, OutputError
from mlic.runrecord import write_json
from mlic.safeload import load_json

STATE_DIR = ".mlic-data"  # in the dataset root: one <archive>.json per unpacked archive
DEFAULT_ARCHIVES = "archives"  # below the root, when no archive folder is given


def prepare(
    dataset: str,
    root: str | Path,
    *,
    download: bool = False,
    archive_dir: str | Path | None = None,
    keep_archives: bool = False,
    mirror: str | None = None,
    sources: Iterable[Archive] | None = None,
    progress: bool | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Bring `root` to the layout of `dataset`; returns the names of the archives still missing
    (downloaded when `download`; without it, archives already in `archive_dir` are verified
    and unpacked, and the others are listed). `sources` replaces the official list (tests)."""
    root = Path(root)
    adir = Path(archive_dir) if archive_dir else root / DEFAULT_ARCHIVES
    if progress is None:
        progress = sys.stderr.isatty()
    check_supported()
    missing = []
    for archive in sources if sources is not None else archives(dataset, mirror):
        done = unpacked_record(archive, root)
        if done is not None:
            log(f"[skip] {archive.name}: unpacked and verified before ({done} files present)")
            continue
        path = adir / archive.name
        if path.is_file():
            log(f"{archive.name}: found in {adir}, verifying")
            verify(archive, path, progress=progress)
        elif download:
            _check_space(archive, path, root, keep_archives)
            fetch(
                archive,
                path,
                progress=progress,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                log=log,
            )
        else:
            part = part_path(path)
            have = ""
            if part.is_file():
                have = f" ({human_size(part.stat().st_size)} of it in {part.name})"
            log(f"[missing] {archive.name}{have}: run with --download, or put it in {adir}/")
            missing.append(archive.name)
            continue
        files = unpack(archive, path, root, progress=progress, log=log)
        write_json(
            root / STATE_DIR / f"{archive.name}.json",
            {"archive": archive.name, "md5": archive.md5, "size": archive.size, "files": files},
        )
        if keep_archives:
            log(f"{archive.name}: {len(files)} files unpacked; archive kept in {adir}")
        else:
            path.unlink()
            log(
                f"{archive.name}: {len(files)} files unpacked; archive removed "
                "(--keep-archives keeps it)"
            )
    if not archive_dir:  # our own archive folder, once nothing is left in it (never the user's)
        with contextlib.suppress(OSError):
            adir.rmdir()
    return missing


def unpacked_record(archive: Archive, root: Path) -> int | None:
    """The number of files an earlier unpacking wrote, if its record matches this archive and
    they all still exist; None otherwise (unpack again)."""
    record_path = Path(root) / STATE_DIR / f"{archive.name}.json"
    if not record_path.is_file():
        return None
    try:
        record = load_json(record_path)
    except DataError:
        return None
    if not isinstance(record, dict) or record.get("md5") != archive.md5:
        return None
    files = record.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    if all((root / f).is_file() for f in files):
        return len(files)
    return None


def _check_space(archive: Archive, path: Path, root: Path, keep: bool) -> None:
    """Refuse before downloading when a disk cannot hold its share: the rest of the archive
    where it downloads to, and its unpacked files (about the archive's size: JPEGs do not
    compress) in the root; on one disk, both at once."""
    if archive.size is None:
        return
    part = part_path(path)
    remaining = archive.size - (part.stat().st_size if part.is_file() else 0)
    kept = ", and the archive is kept" if keep else ""
    if same_filesystem(path.parent, root):
        need = remaining + archive.size
        _refuse_short(
            path.parent,
            need,
            f"{archive.name} needs at least {human_size(need)} ({human_size(remaining)} to "
            f"download, about {human_size(archive.size)} unpacked{kept}); free space or put "
            "the archives on another disk with --archives DIR",
        )
        return
    _refuse_short(
        path.parent,
        remaining,
        f"{archive.name} needs {human_size(remaining)} to download{kept}; free space or choose "
        "another --archives DIR",
    )
    _refuse_short(
        root,
        archive.size,
        f"{archive.name} unpacks to about {human_size(archive.size)} in {root}; free space "
        "there or choose another --root",
    )


def _refuse_short(where: Path, need: int, why: str) -> None:
    free = free_bytes(where)
    if free is not None and free < need:
        raise OutputError(f"{existing_ancestor(where)}: {human_size(free)} free, {why}")
