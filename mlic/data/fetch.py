"""Download one archive, resumably, and check it before anyone unpacks it.

- Bytes go to `<archive>.part`; a rerun (or a retry after a dropped connection) asks the server
  for the rest with an HTTP Range request. A server that ignores Range sends the whole file,
  and the download starts over. A dropped connection is resumed up to `retries` times, waiting
  `backoff` seconds, then twice that, and so on.
- The MD5 is computed while the bytes arrive (and over a partial file's bytes before resuming)
  and checked, with the size, before the file is renamed into place; a complete file with the
  wrong size or checksum is renamed `<archive>.bad`, never unpacked and never resumed from, so
  the next run downloads it afresh.
- Each URL of an archive is tried in turn (the official host, then a mirror); a full disk is
  one OutputError that keeps the partial file for resuming, not taken for a dropped connection.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlic.data.disk import CHUNK, human_size, progress_bar
from mlic.data.sources import Archive
from mlic.errors import DataError, OutputError, one_line

USER_AGENT = "mlic-data/1 (+python urllib)"


class _Unavailable(Exception):
    """This URL cannot give the file (no connection, an HTTP error, another size): try the next."""


def part_path(path: Path) -> Path:
    """Where the bytes of `path` collect while it downloads."""
    return path.with_name(path.name + ".part")


def fetch(
    archive: Archive,
    dest: Path,
    *,
    progress: bool = False,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> None:
    """Download `archive` to `dest` (through `dest.part`, resumed where it stopped), check its
    size and MD5, then rename it into place."""
    part = part_path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{dest.parent}: cannot create ({exc.strerror})") from None
    state = _Partial(part, archive.size)
    if state.have:
        log(f"{archive.name}: resuming at {human_size(state.have)} of {human_size(archive.size)}")
        _hash_file(part, state.hasher, f"checking {part.name}", progress)
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
        kept = f"; {human_size(state.have)} kept in {part} for resuming" if state.have else ""
        raise DataError(f"{archive.name}: cannot download: {'; '.join(failures)}{kept}")
    _check_digest(archive, part, state.size_now(), state.hasher.hexdigest())
    os.replace(part, dest)
    how = "MD5 verified" if archive.md5 else "size checked (no published checksum)"
    log(f"{archive.name}: downloaded, {how}")


def verify(archive: Archive, path: Path, *, progress: bool = False) -> None:
    """Size and MD5 of an archive already on disk (downloaded by hand, or before a crash)."""
    hasher = _md5()
    _hash_file(path, hasher, f"checking {archive.name}", progress)
    _check_digest(archive, path, path.stat().st_size, hasher.hexdigest())


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


def _md5() -> Any:
    return hashlib.md5(usedforsecurity=False)


def _hash_file(path: Path, hasher: Any, desc: str, progress: bool) -> None:
    """Feed the bytes of `path` to `hasher`, with a progress bar."""
    with open(path, "rb") as f, progress_bar(path.stat().st_size, desc, progress) as bar:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            hasher.update(chunk)
            bar.update(len(chunk))


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
    log: Callable[[str], None],
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
            f"{archive.name}: {_reason(error)} at {human_size(state.have)}; resuming in "
            f"{wait:.0f} s (try {dropped} of {retries})"
        )
        time.sleep(wait)


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - sources.py checks URLs


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
        progress_bar(expected, archive.name, progress, initial=state.have) as bar,
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
                f"{part.parent}: no space left on device after "
                f"{human_size(self.state.size_now())} of {self.archive.name} "
                f"({human_size(self.archive.size)}); the partial download {part.name} is kept: "
                "free space and run again to resume"
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


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in one short line (URLError keeps it in `.reason`)."""
    reason = getattr(exc, "reason", None) or exc
    return one_line(reason)[:200] or type(reason).__name__
