"""environment.yml and pyproject.toml pin the same packages at the same versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", req)
        assert match, f"not pinned with ==: {req!r}"
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted.update(_pins(extra))

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip.extend(dep["pip"])
        else:
            conda.append(dep)
    have = _pins(pip)
    for dep in conda:
        if dep == "pip" or re.match(r"python(?![\w-])", dep):
            continue  # the interpreter's range is compared below
        name, _, version = dep.partition("=")
        assert version, f"environment.yml: {dep} is not pinned"
        have[name.lower()] = version
    assert have == wanted
    # The same Python range as requires-python.
    python = [d for d in conda if d.startswith("python")]
    assert python == [f"python{project['requires-python']}"]
