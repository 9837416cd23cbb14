"""The prose around the committed results quotes them right: every number written with two
decimals in the README and in docs/results.md (outside the generated block, code and links)
is a number of a committed table's CSV. Regenerating the results without rewriting the prose
fails here, instead of leaving a page that describes other runs."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from mlic.report import README_BEGIN, README_END

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "results" / "tables"
PAGES = ("README.md", "docs/results.md")
# A quoted number: two decimals, optionally signed (ASCII or Unicode minus); not part of a
# longer token such as a version, a DOI or a file name.
NUMBER = re.compile(r"(?<![\w.])([+\-−]?\d+\.\d{2})(?![\w.]*\d)")


def prose(text: str) -> str:
    """The text a reader takes for prose: without the generated block, fenced code, inline code
    and link targets."""
    if README_BEGIN in text:
        head, rest = text.split(README_BEGIN, 1)
        text = head + rest.split(README_END, 1)[-1]
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    text = re.sub(r"Python \d+\.\d+(–\d+\.\d+)?", "Python", text)  # versions, not results
    return re.sub(r"\]\([^)]*\)", "]", text)


def quoted(text: str) -> list[str]:
    return NUMBER.findall(prose(text))


def table_numbers() -> set[str]:
    """Every numeric cell of the committed tables, as "12.34" with the sign dropped (prose
    writes "−2.28 [−4.53, −0.02]" for a CSV's -2.28, -4.53, -0.02)."""
    out: set[str] = set()
    for path in sorted(TABLES.glob("*.csv")):
        frame = pd.read_csv(path)
        for column in frame.columns:
            values = pd.to_numeric(frame[column], errors="coerce").dropna()
            out.update(f"{abs(v):.2f}" for v in values)
    return out


def test_the_rule_finds_quoted_numbers_and_skips_the_rest():
    text = (
        "reaches **61.91 ± 0.24 % mAP**, −2.28 [−4.53, +0.02] points; torch 2.14.1, Python 3.11–3.13, "
        "doi 10.3969/j.issn, `mlic train --set train.lr=0.004`, [x](a/1.25.md) 9.2 %\n"
        f"{README_BEGIN}\n| 99.99 |\n{README_END}\n```\n12.34\n```"
    )
    assert quoted(text) == ["61.91", "0.24", "−2.28", "−4.53", "+0.02"]


@pytest.mark.parametrize("page", PAGES)
def test_every_number_the_prose_quotes_is_in_a_committed_table(page):
    known = table_numbers()
    assert known, f"no table CSV under {TABLES}"
    stray = [n for n in quoted((ROOT / page).read_text()) if n.lstrip("+-−") not in known]
    assert not stray, (
        f"{page} quotes numbers that no table in results/tables/ holds (stale prose after a "
        f"regeneration?): {', '.join(stray)}"
    )
