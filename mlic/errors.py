"""The one exception type for mistakes a user can fix (bad config, bad data, bad checkpoint).

The CLI prints these as a single line and exits non-zero; anything else is a programming
error and keeps its traceback.
"""

from __future__ import annotations


class MlicError(Exception):
    """A user-facing error: the message names the file or key and what is wrong with it."""


class ConfigError(MlicError):
    """An unknown preset, an unknown override key, or a value of the wrong type."""


class DataError(MlicError):
    """A dataset file that is missing, does not parse, or holds something we cannot use."""


class CheckpointError(MlicError):
    """A checkpoint that does not load, or was made for another architecture."""


class OutputError(MlicError):
    """A file we could not write: a read-only or full file system, a missing permission, a
    parent that is not a directory. What was there before is left as it was."""


def one_line(exc: BaseException) -> str:
    """A library's exception text (YAML and JSON errors span lines) folded into one line."""
    return " ".join(str(exc).split())
