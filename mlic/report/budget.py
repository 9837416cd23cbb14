"""Table 6 (beyond the paper): does the plan's training budget decide its verdicts?

Two of Table 4's settings ("Ours" and "ResNet + Transformer") are trained again at twice the
epochs (the plan's `budget` runs, seed 0). The table states each pair of best-epoch mAPs and
whether doubling moved the run by less than `ROBUST_POINTS`; its last row sets the effect of
Table 4b on the same two settings (paired over seeds at the plan's budget) beside the one-seed
difference at twice the budget, and says whether the verdict keeps its side.
"""

from __future__ import annotations

import math

import pandas as pd

from mlic.report.ablation import EFFECTS
from mlic.report.captions import describe, missing_line
from mlic.report.records import Collected, RunRecord
from mlic.report.stats import diff
from mlic.report.table import BEST, Table, feeding

# Doubling the epochs may move a run by less than this (points of best-epoch mAP) for the
# budget to count as long enough: past it, a verdict may be an artifact of stopping early.
ROBUST_POINTS = 1.0
ROW_LABELS = {
    "resnest-dual": "Ours (ResNeSt + dual-branch Transformer)",
    "resnet-transformer": "ResNet + Transformer",
}
BOTH_VS_NEITHER = next(e for e in EFFECTS if e[0].startswith("both"))


def _seed0(records: list[RunRecord]) -> RunRecord | None:
    """The record trained with the preset's seed (the run the 2x run repeats), if any."""
    seeds = sorted(records, key=lambda r: (not isinstance(r.seed, int), str(r.seed)))
    return seeds[0] if seeds else None


def _epochs(record: RunRecord | None) -> float:
    return float(record.get("train.epochs")) if record is not None else math.nan


def table6(collected: Collected) -> Table:
    """One row per budget setting (mAP at E and 2E epochs, the change, robust or not), then
    Table 4b's both-vs-neither effect at E against the same difference at 2E."""
    fed = feeding("table4")
    doubled = feeding("budget")
    rows, used = [], []
    at = {}  # cell -> (mAP at E, mAP at 2E)
    for cell, label in ROW_LABELS.items():
        base = _seed0(collected.records.get(fed[cell], []))
        twice = _seed0(collected.records.get(doubled[cell], []))
        used += [r for r in (base, twice) if r is not None]
        at[cell] = (base.map if base else math.nan, twice.map if twice else math.nan)
        change = diff(at[cell][1], at[cell][0])
        rows.append(
            {
                "Run": label,
                "Epochs": _epochs(base),
                "mAP": at[cell][0],
                "Epochs, doubled": _epochs(twice),
                "mAP, doubled": at[cell][1],
                "Change (points)": change,
                f"Within {ROBUST_POINTS:g} point": ""
                if math.isnan(change)
                else ("yes" if abs(change) < ROBUST_POINTS else "no"),
                "Runs": ", ".join(r.name for r in (base, twice) if r is not None),
            }
        )
    return Table(
        pd.DataFrame(rows),
        title=(
            "Table 6 (beyond the paper). Budget robustness: best-epoch mAP (%) at the plan's "
            "epochs and at twice them (seed 0)"
        ),
        caption=describe(used, collected.family, "COCO 2014", "448 px"),
        notes=[
            f"mAP: {BEST}, of the plan's seed-0 run and of the same configuration trained for "
            f"twice the epochs (the plan's budget runs, `mlic reproduce --only budget`). The "
            f"budget counts as long enough for a run when doubling it moves the run by less "
            f"than {ROBUST_POINTS:g} point.",
            verdict_note(collected, at),
        ],
        missing=missing_line(collected, list(doubled.values())),
        two_decimals=("mAP", "mAP, doubled", "Change (points)"),
    )


def verdict_note(collected: Collected, at: dict[str, tuple[float, float]]) -> str:
    """Table 4b's verdict on "Ours" against "ResNet + Transformer", then at twice the epochs."""
    from mlic.effects import paired_effect  # the paired effect as Table 4b computes it

    label, a, b, better_a, better_b = BOTH_VS_NEITHER
    by_seed = {name: {r.seed: r.map for r in collected.records.get(name, [])} for name in (a, b)}
    effect = paired_effect(by_seed[a], by_seed[b])
    doubled = diff(at["resnest-dual"][1], at["resnet-transformer"][1])
    if math.isnan(doubled) or math.isnan(effect.mean):
        return f"Table 4b's {label}: not both budgets have records yet."
    verdict = effect.verdict(better_a, better_b)
    side = better_a if doubled > 0 else better_b
    if effect.resolved:
        kept = (effect.mean > 0) == (doubled > 0)
        interval = f"[{effect.low:+.2f}, {effect.high:+.2f}]"
        inside = effect.low <= doubled <= effect.high
        holds = (
            f"the verdict {'holds' if kept else 'does not hold'} at twice the epochs (one seed: "
            f"{side}, {'inside' if inside else 'outside'} the interval {interval})"
        )
    else:
        holds = f"at twice the epochs, one seed: {side}; there was no verdict to hold"
    return (
        f"Table 4b's {label}: {effect.mean:+.2f} points at the plan's epochs ({verdict}, "
        f"{effect.n} paired seeds); at twice the epochs {doubled:+.2f} (seed 0); {holds}."
    )
