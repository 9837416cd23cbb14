"""Reading files that someone else may have written: regular files only, bounded in size and
nesting, YAML without aliases.

Every reader of a user-supplied file (annotations, configurations, run records) goes through
here, so that no input can make `mlic` hang (a FIFO), grow without bound (a YAML alias bomb,
a huge file) or crash deep in a parser (nesting that exhausts the recursion limit). Each
refusal is a one-line `DataError`/`ConfigError` naming the file and, for a limit, the limit.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml

from mlic.errors import DataError, MlicError, one_line

# The limits (docs/reliability.md, "Bad input", lists them). Sizes in bytes.
MAX_JSON_BYTES = 1 << 30  # 1 GiB: COCO's instances_train2014.json is 0.33 GB
MAX_YAML_BYTES = 1 << 20  # 1 MiB: a resolved config.yaml is about 2 KB
MAX_TEXT_BYTES = 64 << 20  # 64 MiB: VOC image-set lists, classes.txt
MAX_XML_BYTES = 4 << 20  # 4 MiB per VOC annotation (a real one is about 1 KB)
MAX_DEPTH = 64  # nesting of JSON arrays/objects and YAML collections (COCO needs 5)
# What a JSON file may make the parser build, counted by the same scan: arrays/objects, and
# values (commas + containers). A few bytes of JSON become ~60-100 bytes of Python objects,
# so these, not the file size, bound the parser's memory (at worst about 8 GB).
MAX_JSON_CONTAINERS = 1 << 25  # 33.5 M
MAX_JSON_VALUES = 1 << 27  # 134 M
_CHUNK = 1 << 18  # 256 KiB read at a time by the JSON depth scan (it needs ~10x that)


def open_regular(path: str | Path, error: type[MlicError] = DataError) -> BinaryIO:
    """Open `path` for reading only if it is a regular file: a FIFO, a device or a socket would
    block or never end. O_NONBLOCK makes the open itself return at once for a FIFO."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot open ({exc.strerror or type(exc).__name__})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path}: not a regular file ({_kind(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def read_bytes(path: str | Path, max_bytes: int, error: type[MlicError] = DataError) -> bytes:
    """The whole file, refused (before reading it) when larger than `max_bytes`."""
    with open_regular(path, error) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise error(f"{path}: {size:,} bytes, over the limit of {max_bytes:,} bytes")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > max_bytes:  # grew while we read it
        raise error(f"{path}: over the limit of {max_bytes:,} bytes")
    return data


def read_text(path: str | Path, max_bytes: int, error: type[MlicError] = DataError) -> str:
    data = read_bytes(path, max_bytes, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})") from None


# --------------------------------------------------------------------------- JSON


def load_json(
    path: str | Path, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH
) -> Any:
    """Parse a JSON file after checking its size, nesting depth and number of values.

    A streaming scan in fixed-size chunks checks the depth and counts the containers and
    values before the parser sees the file, so a file of `[[[[...` is refused after reading one
    chunk, and one of `[{},{},...]` (3 bytes per dict) before a dict is built: the parser's
    memory is bounded by what it may build, not only by the file's size.
    """
    path = Path(path)
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise DataError(f"{path}: {size:,} bytes, over the limit of {max_bytes:,} bytes")
        containers, values = _check_json_depth(handle, path, max_depth)
        for count, limit, what in (
            (containers, MAX_JSON_CONTAINERS, "arrays and objects"),
            (values, MAX_JSON_VALUES, "values"),
        ):
            if count > limit:
                raise DataError(f"{path}: {count:,} {what}, over the limit of {limit:,}")
        handle.seek(0)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DataError(f"{path}: over the limit of {max_bytes:,} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text at byte {exc.start})") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        raise DataError(f"{path}: not valid JSON ({one_line(exc)[:200]})") from None
    except RecursionError:  # pragma: no cover - the depth scan refuses this first
        raise DataError(f"{path}: JSON nested too deeply") from None


_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def _check_json_depth(handle: BinaryIO, path: Path, max_depth: int) -> tuple[int, int]:
    """Refuse nesting deeper than `max_depth`, reading `_CHUNK` bytes at a time (vectorised);
    returns the number of containers and of values (commas + containers) outside strings.

    Brackets inside strings do not count: a quote opens or closes a string unless an odd run of
    backslashes precedes it. The state carried between chunks is whether we are inside a
    string, the backslash run at the chunk's end, and the depth.
    """
    in_string, run, depth, offset = False, 0, 0, 0
    containers = commas = 0
    while chunk := handle.read(_CHUNK):
        b = np.frombuffer(chunk, dtype=np.uint8)
        is_bs = b == _BACKSLASH
        if run == 0 and not is_bs.any():  # the common case: no escapes in this chunk
            quotes = b == _QUOTE
            trailing = 0
        else:
            # Length of the run of backslashes ending just before each byte.
            idx = np.arange(b.size, dtype=np.int32)
            last_non_bs = np.maximum.accumulate(np.where(is_bs, np.int32(-1), idx))
            prev_non_bs = np.concatenate((np.array([-1], np.int32), last_non_bs[:-1]))
            run_before = idx - 1 - prev_non_bs
            run_before = np.where(prev_non_bs == -1, run_before + run, run_before)
            quotes = (b == _QUOTE) & (run_before % 2 == 0)
            trailing = b.size - 1 - int(last_non_bs[-1])
        # Inside a string: an odd number of unescaped quotes up to and including the byte.
        parity = np.cumsum(quotes, dtype=np.int32)
        np.bitwise_and(parity, 1, out=parity)
        inside = parity.astype(bool) ^ in_string
        step = _STEP[b]  # a fresh int8 array
        step[inside | quotes] = 0
        containers += int(np.count_nonzero(step == 1))
        commas += int(np.count_nonzero((b == _COMMA) & ~inside))
        levels = np.cumsum(step, dtype=np.int32)
        levels += depth
        if levels.size and int(levels.max()) > max_depth:
            where = offset + int(np.argmax(levels > max_depth))
            raise DataError(
                f"{path}: JSON nested deeper than the limit of {max_depth} levels "
                f"(at byte {where:,})"
            )
        depth = int(levels[-1])
        in_string = bool(inside[-1])  # the state after the chunk's last byte
        run = run + trailing if trailing == b.size else trailing
        offset += b.size
    return containers, commas + containers


# --------------------------------------------------------------------------- YAML


class _YAMLLimit(yaml.YAMLError):
    """An alias, or nesting beyond the limit: refused while composing, before any expansion."""

    def __init__(self, message: str, mark: Any):
        super().__init__(message)
        self.problem, self.problem_mark, self.context = message, mark, None


class BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader without aliases (our files never need them; expanding them is how
    a 1.6 KB file becomes gigabytes), with a nesting limit (the composer recurses) and without
    duplicate keys (PyYAML lets the later one win silently: `epochs: 1` then `epochs: 3`)."""

    max_depth = MAX_DEPTH

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _YAMLLimit(
                "YAML aliases (*name) are not accepted in mlic files", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise _YAMLLimit(
                    f"nested deeper than the limit of {self.max_depth} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            name = (key.tag, key.value)
            if name in first:
                raise _YAMLLimit(
                    f"duplicate key {key.value[:60]!r} (first on line {first[name] + 1}); a "
                    "YAML mapping names each key once",
                    key.start_mark,
                )
            first[name] = key.start_mark.line
        return node


def parse_yaml(text: str, source: str, error: type[MlicError] = DataError) -> Any:
    """Parse YAML text; a syntax error or a refusal is one line: `source:line:column: problem`."""
    try:
        return yaml.load(io.StringIO(text), Loader=BoundedSafeLoader)  # noqa: S506 - safe loader
    except _YAMLLimit as exc:
        raise error(f"{source}: refused{_where(exc)}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
        raise error(f"{source}: not valid YAML{_where(exc)} ({one_line(problem)[:200]})") from None
    except RecursionError:  # pragma: no cover - the depth limit refuses this first
        raise error(f"{source}: YAML nested too deeply") from None


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def load_yaml(path: str | Path, error: type[MlicError] = DataError) -> Any:
    """A YAML file (a configuration or a run's config.yaml), bounded as `parse_yaml`."""
    text = read_text(path, MAX_YAML_BYTES, error)
    return parse_yaml(text, str(path), error)
