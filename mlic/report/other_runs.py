"""The other runs table: complete records under a setting's name that are not the plan's run
(another configuration, or a `<setting>-<tag>` name such as a hand-run ablation), each with its
mAP and the keys in which its configuration differs from the plan's. Never averaged elsewhere."""

from __future__ import annotations

import pandas as pd

from mlic.report.config_diff import IGNORED
from mlic.report.records import Collected
from mlic.report.stats import diff, summarize
from mlic.report.table import BEST, EPOCH_NOTE, LAST, Table

PLAN_RUNS = "mAP of the setting's runs in the tables"
SAME_CONFIGURATION = "none: the plan's configuration, under a name that is not a seed's"


def other_runs_table(collected: Collected) -> Table | None:
    """One row per other run, by name; None when there is none (no table is written)."""
    if not collected.other:
        return None
    rows = []
    for name, other in sorted(collected.other.items()):
        r = other.record
        plan = summarize(collected.records.get(other.setting, []), lambda x: x.map)
        rows.append(
            {
                "Run": name,
                "Setting": other.setting,
                "Seed": r.seed,
                f"mAP, {BEST}": r.map,
                f"mAP, {LAST}": r.last_map,
                PLAN_RUNS: plan.mean,
                "std": plan.std,
                "n": plan.n,
                "Difference from the setting's runs": diff(r.map, plan.mean),
                "Differs from the plan in": "; ".join(map(str, other.differences))
                or SAME_CONFIGURATION,
            }
        )
    return Table(
        pd.DataFrame(rows),
        title=(
            "Other runs. Records named after a setting of the plan whose configuration is not "
            "the plan's: in no other table"
        ),
        caption=(
            f"Each record's config.yaml against the {collected.family} plan's configuration of "
            "its setting, key by key (a key added since the record was written takes its "
            "default); a record named <setting>-<tag> is compared with that setting. Keys that "
            f"may differ in a seed of the plan: {', '.join(sorted(IGNORED))}."
        ),
        notes=[
            "mAP in %. Difference: the run's mAP minus the mean of its setting's runs in the "
            "tables. " + EPOCH_NOTE
        ],
        summaries={PLAN_RUNS: ("std", "n")},
        csv_only=(f"mAP, {LAST}",),
        two_decimals=(f"mAP, {BEST}",),
    )
