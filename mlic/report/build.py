"""The report: collect the records, build every table and figure, then write them all."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mlic import paper
from mlic.report.ablation import table4, table4b
from mlic.report.budget import table6
from mlic.report.comparison import comparison_table, table3
from mlic.report.figures import figure5, figure6
from mlic.report.other_runs import other_runs_table
from mlic.report.records import Collected, collect
from mlic.report.render import OTHER_RUNS, TABLE_FILES, csv_text, markdown_block, write
from mlic.report.sizes import table5, table5_effects
from mlic.report.table import Table


def build_tables(runs_dir: Path, family: str = "embedded") -> dict[str, Table]:
    """Tables 1-6 as `Table`s (numbers; NaN where missing). Keys: table1, table2, table3,
    table3_classes, table4, table4b (effects paired over seeds), table5 (AP by object size),
    table5_effects (table4b's effects per size bucket), table6 (the budget check), and
    other_runs when there are any."""
    return tables_of(collect(Path(runs_dir), family))


def tables_of(collected: Collected) -> dict[str, Table]:
    t3, t3_classes = table3(collected)
    out = {
        "table1": comparison_table(
            collected,
            "table1",
            paper.TABLE1,
            "Table 1. mAP (%) on COCO 2014 val2014 at 448×448",
            "COCO 2014",
        ),
        "table2": comparison_table(
            collected,
            "table2",
            paper.TABLE2,
            "Table 2. mAP (%) on COCO 2014 val2014 at 576×576",
            "COCO 2014",
        ),
        "table3": t3,
        "table3_classes": t3_classes,
        "table4": table4(collected),
        "table4b": table4b(collected),
        "table5": table5(collected),
        "table5_effects": table5_effects(collected),
        "table6": table6(collected),
    }
    other = other_runs_table(collected)
    if other is not None:
        out[OTHER_RUNS] = other
    return out


def build_report(runs_dir: Path, out_dir: Path, family: str = "embedded") -> dict[str, Any]:
    """Write tables/<TABLE_FILES>.{md,csv} (+ table3_classes.csv, table5_effects.csv, and
    other_runs.{md,csv} while there are other runs) and figures/figure{5,6}_*.png.

    Returns {"tables": {name: [paths]}, "figures": {name: path}, "missing": {run: reason},
    "skipped": {run: reason}, "other": {run: [differences]}}. Every number comes from
    `runs_dir` or `mlic.paper`.
    """
    collected = collect(Path(runs_dir), family)
    tables = tables_of(collected)
    tables_dir, figures_dir = Path(out_dir) / "tables", Path(out_dir) / "figures"
    # Render everything first, so that a bad record stops the report before any file changes.
    contents: dict[Path, str | bytes] = {}
    written: dict[str, list[Path]] = {}
    for name in TABLE_FILES + ((OTHER_RUNS,) if OTHER_RUNS in tables else ()):
        md = markdown_block(tables[name])
        if name == "table3":
            md += "\n" + markdown_block(tables["table3_classes"])
        if name == "table5":
            md += "\n" + markdown_block(tables["table5_effects"])
        written[name] = [tables_dir / f"{name}.md", tables_dir / f"{name}.csv"]
        contents[written[name][0]] = md
        contents[written[name][1]] = csv_text(tables[name])
    written["table3"].append(tables_dir / "table3_classes.csv")
    contents[written["table3"][-1]] = csv_text(tables["table3_classes"])
    written["table5"].append(tables_dir / "table5_effects.csv")
    contents[written["table5"][-1]] = csv_text(tables["table5_effects"])
    figures = {
        "figure5": figures_dir / "figure5_loss.png",
        "figure6": figures_dir / "figure6_map.png",
    }
    contents[figures["figure5"]] = figure5(collected)
    contents[figures["figure6"]] = figure6(collected)
    for path, data in contents.items():
        write(path, data)
    if OTHER_RUNS not in tables:  # a table from an earlier report would list runs now gone
        for suffix in (".md", ".csv"):
            (tables_dir / f"{OTHER_RUNS}{suffix}").unlink(missing_ok=True)
    return {
        "tables": written,
        "figures": figures,
        "missing": dict(sorted(collected.missing.items())),
        "skipped": dict(sorted(collected.skipped.items())),
        "other": {
            name: [str(d) for d in o.differences] for name, o in sorted(collected.other.items())
        },
    }


def build_report_in(
    results: str | Path, out_dir: str | Path = "", family: str = "embedded"
) -> dict[str, Any]:
    """`build_report` as the tables and figures notebooks run it: the records of
    `results`/runs, written under `out_dir` (a new temporary folder when empty); says which
    planned runs are missing and which records are other runs, then returns what it wrote."""
    out = build_report(
        Path(results) / "runs",
        Path(out_dir or tempfile.mkdtemp(prefix="mlic-report-")),
        family=family,
    )
    print("missing run records:", out["missing"] or "none")
    if out["other"]:
        print("other runs (not averaged into the tables):", ", ".join(out["other"]))
    return out
