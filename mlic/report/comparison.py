"""Tables 1-3: this replication's mAP (and Table 3's AP per class) beside the paper's."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mlic import paper
from mlic.report.captions import describe, missing_line
from mlic.report.records import Collected, RunRecord
from mlic.report.stats import Summary, diff, summarize
from mlic.report.table import BEST, EPOCH_NOTE, LAST, PAPER, Table, feeding


def comparison_table(
    collected: Collected, table: str, rows: tuple[paper.Row, ...], title: str, paper_data: str
) -> Table:
    """Table 1 or 2: one row per method of the paper, this replication's where it runs it."""
    fed = feeding(table)
    out = []
    used: list[RunRecord] = []
    for row in rows:
        records = collected.records.get(fed.get(row.key, ""), [])
        used += records
        s = summarize(records, lambda r: r.map)
        out.append(
            {
                "Method": row.label,
                "Resolution": f"{row.resolution}×{row.resolution}",
                f"mAP, {PAPER}": row.map.value,
                f"mAP, {BEST}": s.mean,
                "std": s.std,
                "n": s.n,
                f"mAP, {LAST}": summarize(records, lambda r: r.last_map).mean,
                "Difference": diff(s.mean, row.map.value),
                "Runs": s.runs if row.key in fed else "not run by this project",
                "_paper_text": row.map.text,
            }
        )
    size = f"{rows[0].resolution} px"
    return Table(
        pd.DataFrame(out),
        title=title,
        caption=describe(used, collected.family, paper_data, size),
        notes=[
            "mAP in %; the paper's numbers from mlic/paper.py "
            f"({rows[0].map.source.split(' (')[0]}). Rows this project does not run keep an "
            "empty cell. Q2L-R101 here is ResNet + Transformer head trained with this recipe. "
            + EPOCH_NOTE
        ],
        missing=missing_line(collected, list(fed.values())),
        summaries={f"mAP, {BEST}": ("std", "n")},
        csv_only=(f"mAP, {LAST}",),
    )


def voc_row(name: str) -> str | None:
    """The paper's Table 3 row for a class name (devkit name or the paper's abbreviation)."""
    if name in paper.VOC_CLASSES:
        return name
    by_devkit = {v: k for k, v in paper.VOC_CLASSES.items()}
    return by_devkit.get(name)


def table3(collected: Collected) -> tuple[Table, Table]:
    """Table 3 (the paper's VOC classes) and its second block (this replication's classes)."""
    fed = feeding("table3")
    ours = {key: collected.records.get(fed[key], []) for key in ("resnet101", "ours")}
    labels = {"resnet101": "ResNet-101", "ours": "Ours"}
    per_class = {
        key: [r.per_class_ap() for r in records] for key, records in ours.items()
    }  # key -> list over seeds of {class: AP}
    per_class_last = {key: [r.per_class_ap("last") for r in rs] for key, rs in ours.items()}

    def class_summary(key: str, cls: str, epoch: str = "best") -> Summary:
        aps = per_class[key] if epoch == "best" else per_class_last[key]
        values = [ap.get(cls, math.nan) for ap in aps]
        return Summary.of(values, [r.name for r in ours[key]])

    def last_mean(key: str, cls: str | None) -> float:
        """The last epoch's mean over seeds: mAP (cls None) or one class's AP (CSV only)."""
        if cls is None:
            return summarize(ours[key], lambda r: r.last_map).mean
        return class_summary(key, cls, "last").mean

    # Block 1: the paper's VOC table, this replication's numbers where the classes are VOC's.
    own_names: list[str] = []
    for key in ("resnet101", "ours"):
        for ap in per_class[key]:
            own_names += [n for n in ap if n not in own_names]
    voc_names = {voc_row(n): n for n in own_names if voc_row(n)}
    rows = []
    for row in paper.TABLE3:
        out: dict[str, Any] = {"Class": row}
        for key, label, _ in paper.TABLE3_METHODS:
            out[f"{label}, {PAPER}"] = paper.TABLE3[row][key].value
        for key in ("resnet101", "ours"):
            last = math.nan
            if row == "mAP":
                s = summarize(ours[key], lambda r: r.map)
                last = last_mean(key, None)
            elif row in voc_names:
                s = class_summary(key, voc_names[row])
                last = last_mean(key, voc_names[row])
            else:
                s = Summary(math.nan, math.nan, 0, "")
            out[f"{labels[key]}, {BEST}"] = s.mean
            out[f"{labels[key]}, {BEST}, std"] = s.std
            out[f"{labels[key]}, {BEST}, n"] = s.n
            out[f"{labels[key]}, {LAST}"] = last
            out[f"{labels[key]}, difference"] = diff(s.mean, paper.TABLE3[row][key].value)
        rows.append(out)
    paper_rows = pd.DataFrame(rows)
    summaries = {
        f"{labels[k]}, {BEST}": (f"{labels[k]}, {BEST}, std", f"{labels[k]}, {BEST}, n")
        for k in ("resnet101", "ours")
    }
    csv_only = tuple(f"{labels[k]}, {LAST}" for k in ("resnet101", "ours"))

    # Block 2: this replication's per-class AP under its own class names.
    rows = []
    for cls in [*own_names, "mAP"]:
        out = {"Class": cls}
        means = {}
        for key in ("resnet101", "ours"):
            s = summarize(ours[key], lambda r: r.map) if cls == "mAP" else class_summary(key, cls)
            means[key] = s.mean
            out[f"{labels[key]}, {BEST}"] = s.mean
            out[f"{labels[key]}, {BEST}, std"] = s.std
            out[f"{labels[key]}, {BEST}, n"] = s.n
            out[f"{labels[key]}, {LAST}"] = last_mean(key, None if cls == "mAP" else cls)
        out["Ours - ResNet"] = diff(means["ours"], means["resnet101"])
        rows.append(out)
    own_rows = pd.DataFrame(rows)

    used = ours["resnet101"] + ours["ours"]
    embedded = bool(used) and all(not r.get("data.root") for r in used)
    paper_block = Table(
        paper_rows,
        title=(
            "Table 3. AP per class (%) on VOC 2007 test at 448×448: the paper's numbers, "
            "with this replication's beside them"
        ),
        caption=describe(used, collected.family, "VOC 2007", "448 px"),
        notes=[
            "The paper's numbers from mlic/paper.py (Table 3). ML-GCN, SSGRL and ASL (TResNetL) "
            "are not run by this project. "
            + (
                "The generated dataset has its own classes, so only the mAP row compares; "
                "its per-class AP is in the second block."
                if embedded
                else "Class rows are filled where this replication's class names are VOC's."
            )
            + " "
            + EPOCH_NOTE
        ],
        missing=missing_line(collected, list(fed.values())),
        summaries=summaries,
        csv_only=csv_only,
    )
    own_block = Table(
        own_rows,
        title="Table 3 (second block). This replication's AP per class (%)",
        caption=(
            "Classes of the generated embedded dataset, in its order."
            if embedded
            else "Classes as named in this replication's metrics.json, in its order."
        ),
        summaries=summaries,
        csv_only=csv_only,
    )
    return paper_block, own_block
