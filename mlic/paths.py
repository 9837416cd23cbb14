"""Where the project is, so notebooks read and write the same folders wherever they run."""

from __future__ import annotations

import os
from pathlib import Path


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) that holds
    pyproject.toml and mlic/. jupyter lab and nbval run a notebook in notebooks/, papermill
    (as `mlic reproduce` calls it) in the project root; relative paths must mean one thing."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "mlic").is_dir():
            return folder
    return here


def enter_project_root() -> Path:
    """chdir to the project root (a no-op outside a checkout) and return it."""
    root = find_project_root()
    os.chdir(root)
    return root
