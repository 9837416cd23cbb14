"""The README shows what results/ holds and documents commands that exist."""

from __future__ import annotations

import re
from pathlib import Path

from mlic.cli import _parser
from mlic.report import TABLE_FILES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_tables_are_the_committed_results():
    for name in TABLE_FILES:  # every table the report writes, Table 4b and Table 5 included
        table = (ROOT / "results" / "tables" / f"{name}.md").read_text().strip()
        assert table in README, f"README is stale for {name}: run `mlic report --readme README.md`"
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / link).is_file(), link


def test_readme_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("reproduce", "test"):
        assert f"make {target}" in README and re.search(rf"^{target}:", makefile, re.M)
    commands = set(_parser()._subparsers._group_actions[0].choices)
    for used in re.findall(r"^mlic (\w+)", README, re.M):
        assert used in commands, used
    assert "PLACEHOLDER" not in README and "Deviations from the paper" in README
