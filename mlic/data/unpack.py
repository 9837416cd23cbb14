"""Unpack a verified archive into the dataset root, refusing anything unsafe before the first
file is written.

- Refused members: absolute names, names that climb out with `..`, links, special files (tar:
  Python's `data` extraction filter, with links refused outright; zip: the same checks by
  hand), encrypted zip members, and zip members of at least RATIO_FLOOR bytes compressed more
  than MAX_RATIO : 1 (a zip bomb).
- The layout the presets read: an archive's leading folder (`Archive.strip`, "VOCdevkit/" for
  VOC) is dropped, and the paths in `Archive.provides` must exist afterwards.
- The free space is checked against the members' sizes before writing; a disk that fills up
  anyway is one OutputError (the verified archive is kept).
"""

from __future__ import annotations

import errno
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from mlic.data.disk import CHUNK, free_bytes, human_size, progress_bar
from mlic.data.sources import Archive
from mlic.errors import DataError, MlicError, OutputError

MAX_RATIO = 100  # COCO's JSON compresses about 5 : 1 and JPEGs about 1 : 1
RATIO_FLOOR = 1 << 20  # ratios are judged for members of at least 1 MiB


def check_supported() -> None:
    """Refuse before anything is downloaded on a Python whose tarfile has no data filter."""
    if not hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
        raise MlicError("unpacking needs Python 3.11.4 or later (tarfile's data filter)")


def unpack(
    archive: Archive,
    path: Path,
    root: Path,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Check every member, then unpack into `root`; returns the files written, relative to
    `root`."""
    log(f"{archive.name}: unpacking into {root}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{root}: cannot create ({exc.strerror})") from None
    if archive.kind == "zip":
        files = _unpack_zip(archive, path, root, progress)
    else:
        files = _unpack_tar(archive, path, root, progress)
    absent = [p for p in archive.provides if not (root / p).exists()]
    if absent:
        raise DataError(
            f"{path}: unpacked, but {root / absent[0]} is not there: not the expected archive"
        )
    return files


# --------------------------------------------------------------------------- zip


def _unpack_zip(archive: Archive, path: Path, root: Path, progress: bool) -> list[str]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip archive ({exc})") from None
    with zf:
        plan = [(info, _zip_target(info, archive, path)) for info in zf.infolist()]
        plan = [(info, name) for info, name in plan if name]
        total = sum(info.file_size for info, _ in plan)
        _check_room(root, total, path)
        files = []
        with progress_bar(total, f"unpacking {archive.name}", progress) as bar:
            for info, name in plan:
                target = root / name
                if info.is_dir():
                    _makedirs(target)
                    continue
                _makedirs(target.parent)
                try:
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
                    raise DataError(
                        f"{path}: member {info.filename!r} is damaged ({exc})"
                    ) from None
                except OSError as exc:
                    _write_error(exc, target)
                files.append(name)
                bar.update(info.file_size)
    return files


def _zip_target(info: zipfile.ZipInfo, archive: Archive, path: Path) -> str:
    """The member's path below the root ('' to skip it), or a DataError saying why it is unsafe."""
    name = info.filename
    refuse = _unsafe_name(name)
    kind = stat.S_IFMT(info.external_attr >> 16)
    if not refuse and kind == stat.S_IFLNK:
        refuse = "is a symbolic link"
    elif not refuse and kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        refuse = "is not a regular file or folder"
    elif not refuse and info.flag_bits & 0x1:
        refuse = "is encrypted"
    elif not refuse and _bomb(info):
        ratio = info.file_size / max(info.compress_size, 1)
        refuse = (
            f"unpacks {human_size(info.compress_size)} into {human_size(info.file_size)} "
            f"({ratio:,.0f} : 1, above {MAX_RATIO} : 1: a zip bomb?)"
        )
    if refuse:
        raise DataError(f"{path}: member {name[:80]!r} {refuse}; refused, nothing unpacked")
    return _stripped(name, archive.strip)


def _bomb(info: zipfile.ZipInfo) -> bool:
    """A member of at least RATIO_FLOOR bytes compressed more than MAX_RATIO : 1."""
    if info.is_dir() or info.file_size < RATIO_FLOOR:
        return False
    return info.compress_size == 0 or info.file_size / info.compress_size > MAX_RATIO


# --------------------------------------------------------------------------- tar


def _unpack_tar(archive: Archive, path: Path, root: Path, progress: bool) -> list[str]:
    try:
        tf = tarfile.open(path)  # noqa: SIM115 - closed by the `with` below
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{path}: not a readable tar archive ({exc})") from None
    with tf:
        try:
            members = tf.getmembers()
        except (tarfile.TarError, EOFError) as exc:
            raise DataError(f"{path}: damaged tar archive ({exc})") from None
        keep = _tar_filter(archive, path)
        checked = [m for m in members if keep(m, str(root)) is not None]  # all before any write
        _check_room(root, sum(m.size for m in checked), path)
        with progress_bar(len(checked), f"unpacking {archive.name}", progress, unit="file") as bar:
            try:
                tf.extractall(root, members=_counted(checked, bar), filter=keep)
            except OSError as exc:
                _write_error(exc, root)
            except (tarfile.TarError, EOFError) as exc:
                raise DataError(f"{path}: damaged tar archive ({exc})") from None
        return [_stripped(m.name, archive.strip) for m in checked if m.isfile()]


def _tar_filter(archive: Archive, path: Path) -> Callable[[tarfile.TarInfo, str], Any]:
    """tarfile's `data` filter (no absolute names, no `..`, no devices, safe modes), with links
    refused outright (the datasets have none) and the archive's leading folder dropped."""

    def keep(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        refuse = _unsafe_name(member.name)
        if not refuse and (member.issym() or member.islnk()):
            refuse = f"is a link (to {member.linkname[:80]!r})"
        if not refuse:
            try:
                member = tarfile.data_filter(member, dest)
            except tarfile.FilterError as exc:
                refuse = f"is refused by tarfile's data filter ({type(exc).__name__})"
        if refuse:
            raise DataError(f"{path}: member {member.name[:80]!r} {refuse}; nothing unpacked")
        name = _stripped(member.name, archive.strip)
        return member.replace(name=name, deep=False) if name else None

    return keep


def _counted(members: list[tarfile.TarInfo], bar: Any) -> Iterator[tarfile.TarInfo]:
    for m in members:
        yield m
        bar.update(1)


# --------------------------------------------------------------------------- names and disk


def _unsafe_name(name: str) -> str:
    """Why a member name may not be written below the root ('' when it may)."""
    if not name or "\x00" in name or "\\" in name:
        return "has a NUL or backslash in its name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "climbs out of the folder with '..'"
    return ""


def _stripped(name: str, strip: str) -> str:
    """`name` without the archive's leading folder; '' for that folder itself or anything
    outside it."""
    while name.startswith("./"):
        name = name[2:]
    if not strip:
        return name.rstrip("/")
    if not name.startswith(strip):
        return ""
    return name[len(strip) :].rstrip("/")


def _check_room(root: Path, need: int, path: Path) -> None:
    free = free_bytes(root)
    if free is not None and free < need:
        raise OutputError(
            f"{root}: {human_size(free)} free, unpacking {path.name} needs {human_size(need)}; "
            "free space and run again (the verified archive is kept)"
        )


def _makedirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _write_error(exc, path)


def _write_error(exc: OSError, where: Path) -> None:
    if exc.errno == errno.ENOSPC:
        raise OutputError(
            f"{where}: no space left on device while unpacking; free space and run again "
            "(the verified archive is kept, unpacking starts over)"
        ) from None
    raise OutputError(f"{exc.filename or where}: cannot write ({exc.strerror or exc})") from None
