"""`mlic data coco|voc --root DIR [--download]`: fetch, verify and unpack the paper's datasets
into the layout the presets read (<root>/{annotations,train2014,val2014} for COCO,
<root>/VOC2007 for VOC), the archives listed in mlic/data/sources.py.

- Downloads resume: bytes go to `<archive>.part`, and a rerun (or a retry after a dropped
  connection) asks the server for the rest with an HTTP Range request.
- The MD5 is computed while the bytes arrive and checked before anything is unpacked; a
  complete file with the wrong checksum is renamed `<archive>.bad` (never unpacked, never
  resumed from) and the next run downloads it afresh.
- Unpacking refuses, before the first file is written, members that are absolute or climb out
  with `..`, links, special files (tar: Python's `data` extraction filter; zip: the same checks
  by hand) and zip members compressed more than MAX_RATIO : 1 (a zip bomb).
- `<root>/.mlic-data/<archive>.json` records what an archive unpacked to; a rerun skips an
  archive whose record is there and whose files all still exist.

Every failure a user can act on (no network, HTTP 404, a checksum mismatch, a full disk, an
unsafe archive) is one line naming the file or URL.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from mlic.data.sources import Archive, archives
from mlic.errors import DataError, MlicError, OutputError
from mlic.runrecord import write_json
from mlic.safeload import load_json

STATE_DIR = ".mlic-data"  # in the dataset root: one <archive>.json per unpacked archive
CHUNK = 1 << 20
MAX_RATIO = 100  # COCO's JSON compresses about 5 : 1 and JPEGs about 1 : 1
RATIO_FLOOR = 1 << 20  # ratios are judged for members of at least 1 MiB
USER_AGENT = "mlic-data/1 (+python urllib)"

Log = Callable[[str], None]


class _Unavailable(Exception):
    """This URL cannot give the file (no connection, an HTTP error, another size): try the next."""


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
    log: Log = print,
) -> list[str]:
    """Bring `root` to the layout of `dataset`; returns the names of the archives still missing
    (downloaded when `download`; without it, archives already in `archive_dir` are verified
    and unpacked, and the others are listed). `sources` replaces the official list (tests)."""
    root = Path(root)
    adir = Path(archive_dir) if archive_dir else root / "archives"
    if progress is None:
        progress = sys.stderr.isatty()
    if not hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
        raise MlicError("unpacking needs Python 3.11.4 or later (tarfile's data filter)")
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
                archive, path, progress=progress, retries=retries, backoff=backoff,
                timeout=timeout, log=log,
            )  # fmt: skip
        else:
            part = _part(path)
            have = f" ({_size(part.stat().st_size)} of it in {part.name})" if part.is_file() else ""
            log(f"[missing] {archive.name}{have}: run with --download, or put it in {adir}/")
            missing.append(archive.name)
            continue
        count = unpack(archive, path, root, progress=progress, log=log)
        if keep_archives:
            log(f"{archive.name}: {count} files unpacked; archive kept in {adir}")
        else:
            path.unlink()
            log(
                f"{archive.name}: {count} files unpacked; archive removed (--keep-archives keeps it)"
            )
    with contextlib.suppress(OSError):  # the archive folder, once nothing is left in it
        adir.rmdir()
    return missing


# --------------------------------------------------------------------------- download


def fetch(
    archive: Archive,
    dest: Path,
    *,
    progress: bool = False,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    log: Log = print,
) -> None:
    """Download `archive` to `dest` (through `dest.part`, resumed where it stopped), check its
    size and MD5, then rename it into place."""
    part = _part(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{dest.parent}: cannot create ({exc.strerror})") from None
    state = _Partial(part, archive.size)
    if state.have:
        log(f"{archive.name}: resuming at {_size(state.have)} of {_size(archive.size)}")
        state.hash_existing(progress)
    failures = []
    for url in archive.urls:
        try:
            _download(url, archive, state, progress, retries, backoff, timeout, log)
            break
        except _Unavailable as exc:
            failures.append(str(exc))
            if len(archive.urls) > 1:
                log(f"{archive.name}: {exc}")
    else:
        kept = f"; {_size(state.have)} kept in {part} for resuming" if state.have else ""
        raise DataError(f"{archive.name}: cannot download: {'; '.join(failures)}{kept}")
    _check_digest(archive, part, state.size_now(), state.hasher.hexdigest())
    os.replace(part, dest)
    log(f"{archive.name}: downloaded, {_checked(archive)}")


def verify(archive: Archive, path: Path, *, progress: bool = False) -> None:
    """Size and MD5 of an archive already on disk (downloaded by hand, or before a crash)."""
    hasher = _md5()
    size = path.stat().st_size
    with open(path, "rb") as f, _bar(size, f"checking {archive.name}", progress) as bar:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            hasher.update(chunk)
            bar.update(len(chunk))
    _check_digest(archive, path, size, hasher.hexdigest())


def _check_digest(archive: Archive, path: Path, size: int, md5: str) -> None:
    """A wrong size or checksum: the file is renamed <name>.bad and the error says so."""
    problem = ""
    if archive.size is not None and size != archive.size:
        problem = f"{size:,} bytes, expected {archive.size:,}"
    elif archive.md5 is not None and md5 != archive.md5.lower():
        problem = f"MD5 {md5}, expected {archive.md5} (the published checksum)"
    if problem:
        bad = path.with_name(archive.name + ".bad")
        os.replace(path, bad)
        raise DataError(
            f"{archive.name}: {problem}; renamed to {bad} (not unpacked); run again to "
            "download it afresh"
        )


class _Partial:
    """The `.part` file and the MD5 of the bytes in it so far."""

    def __init__(self, part: Path, expected: int | None) -> None:
        self.part = part
        self.hasher = _md5()
        self.have = part.stat().st_size if part.is_file() else 0
        if expected is not None and self.have > expected:  # not a prefix of this archive
            self.restart()

    def size_now(self) -> int:
        return self.part.stat().st_size if self.part.is_file() else 0

    def hash_existing(self, progress: bool) -> None:
        with (
            open(self.part, "rb") as f,
            _bar(self.have, f"checking {self.part.name}", progress) as bar,
        ):
            for chunk in iter(lambda: f.read(CHUNK), b""):
                self.hasher.update(chunk)
                bar.update(len(chunk))

    def restart(self) -> None:
        self.part.unlink(missing_ok=True)
        self.hasher = _md5()
        self.have = 0


def _download(
    url: str,
    archive: Archive,
    state: _Partial,
    progress: bool,
    retries: int,
    backoff: float,
    timeout: float,
    log: Log,
) -> None:
    """Fill `state.part` from `url`, resuming after a dropped connection up to `retries` times."""
    dropped = 0
    while True:
        if archive.size is not None and state.have == archive.size:
            return
        try:
            response = _open(url, state.have, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and state.have:  # nothing left to send, or a stale partial file
                if archive.size is None:
                    return
                state.restart()
                continue
            raise _Unavailable(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if not dropped:  # the first contact failed: this host is unreachable
                raise _Unavailable(f"cannot reach {url} ({_reason(exc)})") from None
            response = None
            error = exc
        if response is not None:
            try:
                with response:
                    if _receive(response, url, archive, state, progress):
                        return
                error = ConnectionError("the connection closed before the end of the file")
            except (OSError, http.client.HTTPException) as exc:  # the network, not the disk
                error = exc
        dropped += 1
        state.have = state.size_now()
        if dropped > retries:
            raise _Unavailable(
                f"{url}: the download broke off {dropped} times ({_reason(error)})"
            ) from None
        wait = backoff * 2 ** (dropped - 1)
        log(
            f"{archive.name}: {_reason(error)} at {_size(state.have)}; resuming in {wait:.0f} s "
            f"(try {dropped} of {retries})"
        )
        time.sleep(wait)


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs only


def _receive(
    response: http.client.HTTPResponse,
    url: str,
    archive: Archive,
    state: _Partial,
    progress: bool,
) -> bool:
    """Append the response body to the partial file; True when the file is complete."""
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if response.status == 206:
        start, total = _content_range(response.headers.get("Content-Range", ""))
        if start != state.have:
            raise _Unavailable(f"{url}: answered a range from byte {start}, asked {state.have}")
    else:  # 200: the whole file (a server that ignores Range starts again from byte 0)
        if state.have:
            state.restart()
        total = length
    if archive.size is not None and total is not None and total != archive.size:
        raise _Unavailable(f"{url}: offers {total:,} bytes, expected {archive.size:,}")
    expected = total if total is not None else archive.size
    received = 0
    with (
        _PartWriter(state, archive) as out,
        _bar(expected, archive.name, progress, initial=state.have) as bar,
    ):
        while True:
            chunk = response.read(CHUNK)  # network errors propagate: the caller resumes
            if not chunk:
                break
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    state.have += received
    if length is not None:
        return received == length
    return expected is None or state.have == expected


class _PartWriter:
    """Appends to the partial file and its MD5; a disk error is one OutputError (not taken for
    a dropped connection), and what was written stays for resuming."""

    def __init__(self, state: _Partial, archive: Archive) -> None:
        self.state, self.archive = state, archive
        try:
            self.file = open(state.part, "ab" if state.have else "wb")  # noqa: SIM115
        except OSError as exc:
            self._fail(exc)

    def write(self, chunk: bytes) -> None:
        try:
            self.file.write(chunk)
        except OSError as exc:
            self._fail(exc)
        self.state.hasher.update(chunk)

    def __enter__(self) -> _PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.file.close()
        except OSError as err:
            self._fail(err)

    def _fail(self, exc: OSError) -> None:
        part = self.state.part
        if exc.errno == errno.ENOSPC:
            raise OutputError(
                f"{part.parent}: no space left on device after {_size(self.state.size_now())} "
                f"of {self.archive.name} ({_size(self.archive.size)}); the partial download "
                f"{part.name} is kept: free space and run again to resume"
            ) from None
        raise OutputError(f"{part}: cannot write ({exc.strerror or exc})") from None


def _content_range(value: str) -> tuple[int, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); total None for '*'."""
    try:
        unit, spec = value.split(" ", 1)
        span, total = spec.split("/", 1)
        if unit != "bytes":
            raise ValueError
        return int(span.split("-", 1)[0]), None if total == "*" else int(total)
    except ValueError:
        raise _Unavailable(f"a partial answer with an unreadable Content-Range {value!r}") from None


def _check_space(archive: Archive, path: Path, root: Path, keep: bool) -> None:
    """Refuse before downloading when the disk cannot hold the rest of the archive plus its
    unpacked files (about the archive's size: JPEGs do not compress)."""
    if archive.size is None:
        return
    part = _part(path)
    remaining = archive.size - (part.stat().st_size if part.is_file() else 0)
    need = remaining + archive.size
    where = _existing(path.parent)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if free < need:
        raise OutputError(
            f"{where}: {_size(free)} free, {archive.name} needs at least {_size(need)} "
            f"({_size(remaining)} to download, about {_size(archive.size)} unpacked"
            f"{', and the archive is kept' if keep else ''}); free space or put the archives "
            "on another disk with --archives DIR"
        )


# --------------------------------------------------------------------------- unpack


def unpack(
    archive: Archive, path: Path, root: Path, *, progress: bool = False, log: Log = print
) -> int:
    """Check every member, then unpack into `root`; returns the number of files written."""
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
    write_json(
        root / STATE_DIR / f"{archive.name}.json",
        {"archive": archive.name, "md5": archive.md5, "size": archive.size, "files": files},
    )
    return len(files)


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


def _unpack_zip(archive: Archive, path: Path, root: Path, progress: bool) -> list[str]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip archive ({exc})") from None
    with zf:
        plan = [(info, _zip_target(info, archive, path)) for info in zf.infolist()]
        plan = [(info, name) for info, name in plan if name]
        _check_room(root, sum(info.file_size for info, _ in plan), path)
        files = []
        total = sum(info.file_size for info, _ in plan)
        with _bar(total, f"unpacking {archive.name}", progress) as bar:
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
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if not refuse and kind == stat.S_IFLNK:
        refuse = "is a symbolic link"
    elif not refuse and kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        refuse = "is not a regular file or folder"
    elif not refuse and info.flag_bits & 0x1:
        refuse = "is encrypted"
    elif not refuse and _bomb(info):
        ratio = info.file_size / max(info.compress_size, 1)
        refuse = (
            f"unpacks {_size(info.compress_size)} into {_size(info.file_size)} "
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


def _unsafe_name(name: str) -> str:
    """Why a member name may not be written below the root ('' when it may)."""
    if not name or "\x00" in name or "\\" in name:
        return "has a NUL or backslash in its name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "climbs out of the folder with '..'"
    return ""


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
        with _bar(len(checked), f"unpacking {archive.name}", progress, unit="file") as bar:
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


def _counted(members: list[tarfile.TarInfo], bar: Any) -> Iterator[tarfile.TarInfo]:
    for m in members:
        yield m
        bar.update(1)


def _check_room(root: Path, need: int, path: Path) -> None:
    try:
        free = shutil.disk_usage(_existing(root)).free
    except OSError:
        return
    if free < need:
        raise OutputError(
            f"{root}: {_size(free)} free, unpacking {path.name} needs {_size(need)}; "
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


# --------------------------------------------------------------------------- small helpers


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _md5() -> Any:
    return hashlib.md5(usedforsecurity=False)


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason).strip() or type(reason).__name__
    return " ".join(text.split())[:200]


def _checked(archive: Archive) -> str:
    if archive.md5:
        return "MD5 verified"
    return "size checked (no published checksum)"


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown size"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _bar(total: int | None, desc: str, enabled: bool, *, initial: int = 0, unit: str = "B") -> Any:
    from tqdm import tqdm

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
