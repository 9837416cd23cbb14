"""The images a command was given: files, folders (walked recursively, image suffixes only)
and glob patterns, each once and in a stable order; whatever cannot be read is listed with its
reason, never opened when it is not a regular file (a FIFO would block a reader forever)."""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


@dataclass
class Discovered:
    """Files to predict (in a stable order, each once) and the inputs skipped, with reasons."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored_in_folders: int = 0  # files without an image suffix inside the given folders


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)  # follows symlinks; never opens the file
    except OSError:
        return False


def discover_images(inputs: Sequence[str | Path]) -> Discovered:
    """Expand files, folders (recursively; image suffixes only) and glob patterns."""
    found = Discovered()
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.normpath(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            found.files.append(path)

    def unreadable(where: str | Path, exc: OSError) -> None:
        found.skipped.append((str(where), f"cannot read ({exc.strerror or type(exc).__name__})"))

    def walk(folder: Path) -> None:
        # os.walk reports a folder it cannot list (onerror) instead of skipping it silently.
        files: list[Path] = []
        for top, dirs, names in os.walk(folder, onerror=lambda e: unreadable(e.filename, e)):
            dirs.sort()
            files.extend(Path(top) / name for name in names)
        for sub in sorted(files, key=lambda p: p.as_posix()):
            if sub.suffix.lower() not in IMAGE_SUFFIXES:
                found.ignored_in_folders += 1
            elif _regular(sub):
                add(sub)
            else:
                found.skipped.append((str(sub), "not a regular file"))

    def consider(path: Path, *, named: bool) -> None:
        try:
            mode = os.stat(path).st_mode  # follows links; raises for one that is broken
        except FileNotFoundError:
            if os.path.lexists(path):
                found.skipped.append((str(path), "a broken link"))
            else:
                found.skipped.append((str(path), "no such file or folder"))
            return
        except OSError as exc:  # e.g. a file in a folder we may not enter
            unreadable(path, exc)
            return
        if stat.S_ISDIR(mode):
            walk(path)
        elif not stat.S_ISREG(mode):
            found.skipped.append((str(path), "not a regular file"))
        elif named or path.suffix.lower() in IMAGE_SUFFIXES:
            add(path)  # a file named explicitly is tried whatever its suffix

    for item in inputs:
        text = str(item)
        if not os.path.lexists(text) and glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                found.skipped.append((text, "the pattern matches nothing"))
            for match in matches:
                consider(Path(match), named=False)
        else:
            consider(Path(text), named=True)
    return found
