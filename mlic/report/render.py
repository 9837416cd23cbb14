"""A `Table` as Markdown (cells as printed: "mean ± std (n=k)", signed differences) and as CSV
(numbers, two decimals), written atomically; the results page's block (docs/results.md) spliced
from them."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from mlic import pretext
from mlic.attention import SUMMARY_FILE
from mlic.errors import DataError
from mlic.plan import FAMILIES
from mlic.report.stats import Summary
from mlic.report.table import PAPER, Table
from mlic.runrecord import atomic_write_bytes, read_metrics
from mlic.safeload import load_json

TABLE_FILES = (
    "table1",
    "table2",
    "table3",
    "table4",
    "table4b",
    "table5",
    "table6",
)  # tables/<name>.md
OTHER_RUNS = "other_runs"  # tables/other_runs.{md,csv}, only while there are other runs


# --------------------------------------------------------------------------- cells and tables


def cell(s: Summary) -> str:
    """The mean for one run, "mean ± std (n=k)" for several, empty for none."""
    if s.n == 0 or math.isnan(s.mean):
        return ""
    if s.n == 1:
        return f"{s.mean:.2f}"
    return f"{s.mean:.2f} ± {s.std:.2f} (n={s.n})"


def signed(x: float) -> str:
    return "" if math.isnan(x) else f"{x:+.2f}"


def display_frame(table: Table) -> pd.DataFrame:
    """Strings for Markdown: mean ± std (n) in one cell, paper numbers as printed, 2 decimals."""
    df, merged = table.frame, table.summaries
    hidden = {c for pair in merged.values() for c in pair} | set(table.csv_only)
    out = pd.DataFrame(index=df.index)
    for column in df.columns:
        if column.startswith("_") or column in hidden:
            continue  # internal, or merged into a "this replication" cell
        values = df[column]
        if column in merged:  # "mean" or "mean ± std (n=k)"
            std, n = (df[c] for c in merged[column])
            out[column] = [
                cell(Summary(m, s, int(k), "")) for m, s, k in zip(values, std, n, strict=True)
            ]
        elif column in table.two_decimals:
            out[column] = ["" if math.isnan(v) else f"{v:.2f}" for v in values]
        elif column in table.integers:
            out[column] = ["" if math.isnan(v) else f"{v:.0f}" for v in values]
        elif any(word in column for word in ("Difference", "difference", "Gain", " - ")):
            out[column] = [signed(v) for v in values]
        elif column == f"mAP, {PAPER}" and "_paper_text" in df:
            out[column] = df["_paper_text"]  # as printed: 87.0, 85.41
        elif column.endswith(PAPER):
            out[column] = [f"{v:.1f}" for v in values]  # Table 3 prints one decimal throughout
        else:
            out[column] = values.astype(str)
    return out


def markdown(df: pd.DataFrame) -> str:
    """A pipe table of `df`'s cells as they are ("|" escaped)."""

    def esc(x: Any) -> str:
        return str(x).replace("|", "\\|")

    lines = [
        "| " + " | ".join(esc(c) for c in df.columns) + " |",
        "|" + "|".join("---" for _ in df.columns) + "|",
    ]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def markdown_block(table: Table) -> str:
    """Title, caption, the table, notes and the missing runs, as paragraphs."""
    parts = [f"**{table.title}**", table.caption, markdown(display_frame(table))]
    parts += list(table.notes)
    if table.missing:
        parts.append(table.missing)
    return "\n\n".join(p for p in parts if p) + "\n"


def csv_text(table: Table) -> str:
    """The numbers (internal and Markdown-only columns left out), two decimals."""
    df, markdown_only = table.frame, set(table.markdown_only)
    data = df[[c for c in df.columns if not c.startswith("_") and c not in markdown_only]]
    return data.to_csv(index=False, float_format="%.2f", lineterminator="\n")


def write(path: Path, data: str | bytes) -> None:
    """Write atomically (a reader never sees half a file), with the user's umask."""
    atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)


# --------------------------------------------------------------------------- the results block


WALKTHROUGH_FIGURES = (
    ("walkthrough_predictions", "Walkthrough: validation images, true labels found (+) or missed "
     "(-) and false alarms (!) at the run's thresholds"),
    ("walkthrough_attention", "Walkthrough: where the query of each true class looks "
     "(last decoder layer's cross-attention over the feature-map tokens)"),
)  # fmt: skip
RESULTS_PAGE = Path("docs") / "results.md"  # the project's results page, from the repository root
README_BEGIN = "<!-- results:begin (written by `mlic report --readme docs/results.md`) -->"
README_END = "<!-- results:end -->"


def link(target: Path, page: Path) -> str:
    """`target` as a Markdown link written in `page`: relative to the page's folder, so the
    picture shows wherever the page lives (docs/results.md links `../results/figures/...`)."""
    return Path(os.path.relpath(Path(target).absolute(), Path(page).absolute().parent)).as_posix()


def walkthrough_block(readme: Path, out_dir: Path) -> list[str]:
    """The walkthrough's pictures and its attention-on-object share, when `mlic reproduce` has
    executed it with an output folder (absent otherwise: nothing is added)."""
    parts = []
    summary_path = out_dir / "tables" / SUMMARY_FILE
    if summary_path.is_file():
        s = load_json(summary_path, max_bytes=1 << 16)
        parts.append(
            f"**Where the class queries look** ({s['weights']}; `mlic.attention`): over the first "
            f"{s['images']} validation images, the query of a true class puts "
            f"{100 * s['on_object']:.1f} % of its last-layer cross-attention on the token cells "
            f"its objects' boxes cover, against {100 * s['chance']:.1f} % for an even spread; "
            f"more than an even spread for {100 * s['above_chance']:.1f} % of the {s['pairs']} "
            "(image, class) pairs."
        )
    for name, caption in WALKTHROUGH_FIGURES:
        path = out_dir / "figures" / f"{name}.png"
        if path.is_file():
            parts.append(f"![{caption}]({link(path, readme)})")
    return parts


def pretext_block(out_dir: Path) -> list[str]:
    """One sentence on the pretext runs that pretrained the embedded backbones (`mlic.pretext`),
    from their records; nothing when there are none."""
    fam = FAMILIES["embedded"]
    done = []
    for key, backbone in fam.backbones.items():
        metrics = read_metrics(out_dir / "runs" / pretext.run_name(key))
        if metrics is not None:
            done.append(
                f"`{pretext.run_name(key)}` ({backbone}) {metrics['map']:.2f} % mAP after "
                f"{metrics['epochs']} epochs (best epoch {metrics['best']['epoch']})"
            )
    if not done:
        return []
    return [
        "**Pretrained backbones** (`mlic.pretext`, the stand-in for ImageNet weights): each "
        "backbone was first trained with the GAP head on the pretext tree (one object per "
        "image); on its validation images " + "; ".join(done) + ". Every run above starts "
        "from these weights."
    ]


def update_readme(readme: Path, out_dir: Path) -> None:
    """Put the built tables and figures between the results markers of the Markdown file
    `readme` (the project's is docs/results.md), so that page shows exactly what `results/`
    holds (a test checks they agree). The other runs table is shown after the tables while the
    report writes one. Image links are relative to the page's folder."""
    text = Path(readme).read_text()
    if README_BEGIN not in text or README_END not in text:
        raise DataError(f"{readme}: no results markers ({README_BEGIN} ... {README_END})")
    tables = Path(out_dir) / "tables"
    parts = [(tables / f"{name}.md").read_text().strip() for name in TABLE_FILES]
    if (tables / f"{OTHER_RUNS}.md").is_file():
        parts.append((tables / f"{OTHER_RUNS}.md").read_text().strip())
    for name, caption in (
        ("figure5_loss", "Figure 5. Training loss of ours by epoch"),
        ("figure6_map", "Figure 6. Validation mAP of ours by epoch, model and EMA"),
    ):
        parts.append(f"![{caption}]({link(Path(out_dir) / 'figures' / f'{name}.png', readme)})")
    parts.extend(pretext_block(Path(out_dir)))
    parts.extend(walkthrough_block(Path(readme), Path(out_dir)))
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    block = "\n\n".join(parts)
    write(Path(readme), f"{head}{README_BEGIN}\n\n{block}\n\n{README_END}{tail}")
