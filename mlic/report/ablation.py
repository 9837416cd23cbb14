"""Table 4 (backbone x head on COCO at 448) and Table 4b (its effects, paired over seeds)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mlic import paper
from mlic.effects import CONFIDENCE, PairedEffect, paired_effect
from mlic.plan import SETTINGS
from mlic.report.captions import describe, missing_line
from mlic.report.records import Collected, RunRecord
from mlic.report.stats import diff, summarize
from mlic.report.table import BEST, EPOCH_NOTE, LAST, PAPER, Table, feeding

# Table 4 rows beyond the paper: cell key -> (backbone, head label key).
BEYOND_TABLE4 = {"resnest-dual-shared": ("resnest", "dual-shared")}
HEAD_LABELS = {
    "transformer": "Transformer",
    "dual": "dual-branch Transformer",
    "dual-shared": "dual-branch Transformer, branch sharing encoder layer 0 (beyond the paper)",
}
CI = f"{CONFIDENCE:.0%} CI"

# Table 4b: each effect of the ablation as (label, run A, run B, A better, B better); an effect
# whose settings are not both in the plan is left out.
EFFECTS = (
    (
        "ResNeSt vs ResNet backbone (Transformer head)",
        "coco448-resnest-transformer",
        "coco448-resnet-transformer",
        "ResNeSt better",
        "ResNet better",
    ),
    (
        "dual-branch vs plain Transformer head (ResNet)",
        "coco448-resnet-dual",
        "coco448-resnet-transformer",
        "dual-branch better",
        "plain Transformer better",
    ),
    (
        "both (ResNeSt + dual) vs neither (ResNet + Transformer)",
        "coco448-resnest-dual",
        "coco448-resnet-transformer",
        "both better",
        "neither better",
    ),
    (
        "separate vs shared BatchFormerV2 encoder (ResNeSt + dual)",
        "coco448-resnest-dual",
        "coco448-resnest-dual-shared",
        "separate better",
        "shared better",
    ),
)


def table4(collected: Collected) -> Table:
    """The paper's four columns of Table 4 as rows, then the settings beyond the paper."""
    fed = feeding("table4")
    rows = []
    used: list[RunRecord] = []
    summaries = {}
    last: dict[str, float] = {}
    # The paper's four columns, then the settings beyond the paper (no paper number).
    beyond = [key for key in fed if key not in {c.key for c in paper.TABLE4}]
    for key in [c.key for c in paper.TABLE4] + beyond:
        records = collected.records.get(fed[key], [])
        used += records
        summaries[key] = summarize(records, lambda r: r.map)
        last[key] = summarize(records, lambda r: r.last_map).mean
    base_key = "resnet-transformer"  # the paper's gains in §2.3 are over this column
    base = next(c.map.value for c in paper.TABLE4 if c.key == base_key)
    columns = [(c.key, c.backbone, c.head, c.map.value, c.map.text) for c in paper.TABLE4]
    columns += [(key, *BEYOND_TABLE4[key], math.nan, "") for key in beyond]
    for key, backbone, head, paper_value, paper_text in columns:
        s = summaries[key]
        rows.append(
            {
                "Backbone": "ResNeSt" if backbone == "resnest" else "ResNet",
                "Head": HEAD_LABELS.get(head, head),
                f"mAP, {PAPER}": paper_value,
                f"mAP, {BEST}": s.mean,
                "std": s.std,
                "n": s.n,
                f"mAP, {LAST}": last[key],
                "Difference": diff(s.mean, paper_value),
                "Gain over ResNet + Transformer (paper)": diff(paper_value, base),
                "Gain over ResNet + Transformer (this replication)": diff(
                    s.mean, summaries[base_key].mean
                ),
                "Runs": s.runs,
                "_paper_text": paper_text,
            }
        )
    return Table(
        pd.DataFrame(rows),
        title="Table 4. Ablation on COCO 2014 at 448×448: backbone × head, mAP (%)",
        caption=describe(used, collected.family, "COCO 2014", "448 px"),
        notes=[
            "The paper's numbers from mlic/paper.py (Table 4; its column 2 lost the ResNeSt check "
            "mark in the text extraction, restored from §2.3). Gains are differences of means. "
            + EPOCH_NOTE,
            "The dual-branch rows use the official BatchFormerV2 layer (model.batchformer: "
            "separate). The last row goes beyond the paper: the same model with the branch "
            "reusing encoder layer 0's weights (shared), the paper's other reading "
            "(docs/deviations.md); the paper has no number for it.",
            paper.table4_discrepancy_note(),
        ],
        missing=missing_line(collected, list(fed.values())),
        summaries={f"mAP, {BEST}": ("std", "n")},
        csv_only=(f"mAP, {LAST}",),
    )


def planned_effects() -> list[tuple[str, str, str, str, str]]:
    """The EFFECTS whose two settings are both in the plan."""
    planned = {s.name for s in SETTINGS}
    return [e for e in EFFECTS if e[1] in planned and e[2] in planned]


def effect_columns(e: PairedEffect, better_a: str, better_b: str) -> dict[str, Any]:
    """The cells of one paired effect."""
    return {
        "Mean paired difference, this replication": e.mean,
        f"{CI}, low": e.low,
        f"{CI}, high": e.high,
        CI: "" if math.isnan(e.low) else f"[{e.low:+.2f}, {e.high:+.2f}]",
        "Paired seeds": e.n,
        "Seeds": ", ".join(map(str, e.seeds)),
        "Verdict": e.verdict(better_a, better_b),
    }


def effect_table(
    rows: list[dict[str, Any]],
    title: str,
    measure: str,
    notes: list[str],
    caption: str = "",
    missing: str = "",
) -> Table:
    """A table of paired effects; `measure` names what is differenced (for the note)."""
    return Table(
        pd.DataFrame(rows),
        title=title,
        caption=caption,
        notes=[
            f"Each difference is run A's {measure} minus run B's, trained with the same seed "
            f"(train.seed in config.yaml); the {CI} is mean ± t(0.975, n-1) · sd / √n over the n "
            "paired seeds (Student's t). An effect is resolved when its CI excludes 0.",
            *notes,
        ],
        missing=missing,
        csv_only=(f"{CI}, low", f"{CI}, high"),  # the Markdown shows "[low, high]"
        markdown_only=(CI,),
    )


def table4b(collected: Collected) -> Table:
    """Table 4's effects as mean differences paired by seed, with a 95 % CI (mlic.effects)."""
    paper_map = {
        name: next(c.map.value for c in paper.TABLE4 if c.key == key)
        for key, name in feeding("table4").items()
        if any(c.key == key for c in paper.TABLE4)
    }
    rows, used, unpaired = [], [], []
    for label, a, b, better_a, better_b in planned_effects():
        by_seed = {
            name: {r.seed: r.map for r in collected.records.get(name, [])} for name in (a, b)
        }
        used += collected.records.get(a, []) + collected.records.get(b, [])
        e = paired_effect(by_seed[a], by_seed[b])
        if e.unpaired:
            unpaired.append(f"{label}: seed {', '.join(map(str, e.unpaired))}")
        rows.append(
            {
                "Effect": label,
                "A vs B": f"{a} vs {b}",
                "Difference, paper": diff(paper_map.get(a, math.nan), paper_map.get(b, math.nan)),
                **effect_columns(e, better_a, better_b),
            }
        )
    notes = ["The paper reports one run per configuration: its differences have no interval."]
    if unpaired:
        notes.append(f"Seeds without a partner, left out: {'; '.join(unpaired)}.")
    settings = sorted({name for e in planned_effects() for name in e[1:3]})
    return effect_table(
        rows,
        "Table 4b. Table 4's effects, paired over seeds: mAP difference (points)",
        "mAP",
        notes,
        caption=describe(used, collected.family, "COCO 2014", "448 px"),
        missing=missing_line(collected, settings),
    )
