"""Table 6 (beyond the paper): does the plan's training budget decide its verdicts?

Two of Table 4's settings ("Ours" and "ResNet + Transformer") are trained again at twice the
epochs (the plan's `budget` runs, seed 0). The table gives each pair of best-epoch mAPs and
whether doubling moved the run by less than `ROBUST_POINTS`. Its last row is the difference of
the two settings (Table 4b's "both vs neither") at both budgets, with Table 4b's verdict at the
plan's budget and whether the seed-0 difference at twice the budget keeps its side.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mlic.effects import paired_effect
from mlic.report.ablation import EFFECTS
from mlic.report.captions import describe, missing_line
from mlic.report.records import Collected, RunRecord
from mlic.report.stats import diff
from mlic.report.table import BEST, Table, feeding

# Doubling the epochs may move a run by less than this (points of best-epoch mAP) for the
# budget to count as long enough: past it, a verdict may be an artifact of stopping early.
ROBUST_POINTS = 1.0
ROWS = {  # Table 4 cell -> row label
    "resnest-dual": "Ours (ResNeSt + dual-branch Transformer)",
    "resnet-transformer": "ResNet + Transformer",
}
BOTH_VS_NEITHER = next(e for e in EFFECTS if e[0].startswith("both"))
CHANGE = "Difference (doubled - plan)"
VERDICT, AT_TWICE = "Table 4b verdict (plan's epochs)", "At twice the epochs"


def budget_pair(collected: Collected, cell: str) -> tuple[RunRecord | None, RunRecord | None]:
    """The seed-0 record of Table 4's `cell` and of its run at twice the epochs (None where
    missing): the pair Table 6 and Figure 6 compare."""
    once, twice = (
        next((r for r in collected.records.get(name, []) if r.seed in (0, None)), None)
        for name in (feeding("table4")[cell], feeding("budget")[cell])
    )
    return once, twice


def long_enough(change: float) -> bool:
    """Table 6's criterion: doubling the epochs moved the run by less than ROBUST_POINTS."""
    return abs(change) < ROBUST_POINTS


def _map(record: RunRecord | None) -> float:
    return record.map if record is not None else math.nan


def _epochs(record: RunRecord | None) -> float:
    return float(record.get("train.epochs")) if record is not None else math.nan


def table6(collected: Collected) -> Table:
    """A row per budget setting, then their difference with Table 4b's verdict on it."""
    rows: list[dict[str, Any]] = []
    pair = {cell: budget_pair(collected, cell) for cell in ROWS}
    used = [r for both in pair.values() for r in both if r is not None]
    for cell, label in ROWS.items():
        base, twice = pair[cell]
        rows.append(_row(label, base, _map(base), twice, _map(twice)))
        rows[-1]["Within 1 point"] = _within(rows[-1][CHANGE])
    (a_once, a_twice), (b_once, b_twice) = pair["resnest-dual"], pair["resnet-transformer"]
    gap = _row(
        "Ours - ResNet + Transformer (seed 0)",
        a_once,
        diff(_map(a_once), _map(b_once)),
        a_twice,
        diff(_map(a_twice), _map(b_twice)),
    )
    gap[VERDICT], gap[AT_TWICE] = verdict_cells(collected, gap["mAP, doubled"])
    rows.append(gap)
    return Table(
        pd.DataFrame(rows).fillna({VERDICT: "", AT_TWICE: "", "Within 1 point": ""}),
        title=(
            "Table 6 (beyond the paper). Budget robustness: best-epoch mAP (%) at the plan's "
            "epochs and at twice them (seed 0)"
        ),
        caption=describe(used, collected.family, "COCO 2014", "448 px"),
        notes=[
            f"mAP: {BEST}, of the plan's seed-0 run and of the same configuration trained for "
            "twice the epochs (`mlic reproduce --only budget`). The budget counts as long "
            f"enough for a run when doubling it moves the run by less than {ROBUST_POINTS:g} "
            "point. The last row is the first minus the second: Table 4b's effect "
            f'"{BOTH_VS_NEITHER[0]}" at seed 0, with Table 4b\'s verdict over the paired '
            "seeds at the plan's epochs, and whether the difference at twice the epochs keeps "
            "the verdict's side (one seed: no interval of its own).",
        ],
        missing=missing_line(collected, list(feeding("budget").values())),
        two_decimals=("mAP", "mAP, doubled"),
        integers=("Epochs", "Epochs, doubled"),
    )


def _row(
    label: str, once: RunRecord | None, once_map: float, twice: RunRecord | None, twice_map: float
) -> dict[str, Any]:
    return {
        "Run": label,
        "Epochs": _epochs(once),
        "mAP": once_map,
        "Epochs, doubled": _epochs(twice),
        "mAP, doubled": twice_map,
        CHANGE: diff(twice_map, once_map),
    }


def _within(change: float) -> str:
    return "" if math.isnan(change) else ("yes" if long_enough(change) else "no")


def verdict_cells(collected: Collected, doubled: float) -> tuple[str, str]:
    """Table 4b's verdict on both-vs-neither, and what the seed-0 difference at twice the
    epochs (`doubled`) says of it."""
    _, a, b, better_a, better_b = BOTH_VS_NEITHER
    by_seed = {name: {r.seed: r.map for r in collected.records.get(name, [])} for name in (a, b)}
    effect = paired_effect(by_seed[a], by_seed[b])
    if math.isnan(effect.mean):
        return "", ""
    verdict = f"{effect.mean:+.2f}, {effect.verdict(better_a, better_b)}"
    if not math.isnan(effect.low):
        verdict += f", {effect.n} seeds, [{effect.low:+.2f}, {effect.high:+.2f}]"
    if math.isnan(doubled):
        return verdict, ""
    side = better_a if doubled > 0 else better_b
    if not effect.resolved:
        return verdict, f"{side}; no verdict to hold"
    kept = (effect.mean > 0) == (doubled > 0)
    inside = "inside" if effect.low <= doubled <= effect.high else "outside"
    return verdict, f"{'holds' if kept else 'does not hold'} ({side}, {inside} the interval)"
