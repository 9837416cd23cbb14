"""`Table`: one table's numbers and the words around them, and the labels the tables share."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from mlic.plan import SETTINGS

PAPER, THIS = "paper", "this replication"
# This replication's numbers are those of the best epoch of max(model, EMA), as Query2Label
# (main_mlc.py) and ASL (train.py) report; the CSVs add the last epoch (a column of its own).
BEST, LAST = f"{THIS}, best epoch", f"{THIS}, last epoch"
EPOCH_NOTE = (
    "This replication: the best epoch of max(model, EMA) mAP of each run, as Query2Label and ASL "
    "report it; the CSV also gives the last epoch."
)


@dataclass
class Table:
    """A table as numbers (`frame`: NaN where missing; columns starting with "_" are internal)
    and as a Markdown block: title, caption, the table, the notes, the missing runs."""

    frame: pd.DataFrame
    title: str
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    missing: str = ""  # the "Missing runs: ..." line; empty when none is
    # Markdown cell "mean ± std (n=k)": mean column -> (std column, n column), both CSV only.
    summaries: dict[str, tuple[str, str]] = field(default_factory=dict)
    csv_only: tuple[str, ...] = ()
    markdown_only: tuple[str, ...] = ()
    two_decimals: tuple[str, ...] = ()  # numbers shown as 12.34 in Markdown
    integers: tuple[str, ...] = ()  # numbers shown as 16 in Markdown


def feeding(table: str) -> dict[str, str]:
    """cell key -> setting name, for the settings feeding `table`."""
    return {f.cell: s.name for s in SETTINGS for f in s.feeds if f.table == table}
