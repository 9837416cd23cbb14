"""Tables 1-4 (with 4b, effects over seeds, and 5, AP by object size; Markdown + CSV) and
Figures 5-6 (PNG) from run records alone.

Data flows one way: the report reads `<runs_dir>/<run>/{config.yaml, metrics.json,
history.csv}`, the paper's numbers (`mlic.paper`) and the plan (`mlic.plan`); it never imports
the engine or torch. Output is deterministic - rows in the paper's order, fixed float formats,
PNGs without a software tag at a fixed size and dpi - so deleting the outputs and building again
gives byte-identical files.

A planned run without a complete `metrics.json`, or whose configuration differs from the plan's
in anything but the seed and operational keys (`config_diff.IGNORED`), is *missing*: its cells
stay empty and it is listed, never guessed; a complete one of another configuration is shown in
the other runs table. A record that does not parse is a `DataError` naming the file.

Modules, in the order data flows: records (reading, grouping seeds) and config_diff (a record
against the plan) -> stats, table, captions -> comparison (Tables 1-3), ablation (Tables 4, 4b),
sizes (Table 5), other_runs -> render (Markdown, CSV, the block of docs/results.md), figures -> build.
"""

from __future__ import annotations

from mlic.report.ablation import EFFECTS
from mlic.report.build import build_report, build_tables, tables_of
from mlic.report.config_diff import IGNORED, Difference
from mlic.report.figures import OURS, figure5, figure6
from mlic.report.records import Collected, OtherRun, RunRecord, collect, read_run
from mlic.report.render import (
    OTHER_RUNS,
    README_BEGIN,
    README_END,
    RESULTS_PAGE,
    TABLE_FILES,
    WALKTHROUGH_FIGURES,
    csv_text,
    markdown_block,
    update_readme,
)
from mlic.report.stats import Summary
from mlic.report.table import Table

__all__ = [
    "EFFECTS",
    "IGNORED",
    "OTHER_RUNS",
    "OURS",
    "README_BEGIN",
    "README_END",
    "RESULTS_PAGE",
    "TABLE_FILES",
    "WALKTHROUGH_FIGURES",
    "Collected",
    "Difference",
    "OtherRun",
    "RunRecord",
    "Summary",
    "Table",
    "build_report",
    "build_tables",
    "collect",
    "csv_text",
    "figure5",
    "figure6",
    "markdown_block",
    "read_run",
    "tables_of",
    "update_readme",
]
