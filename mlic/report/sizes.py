"""Table 5 (beyond the paper): AP by object size for Table 4's settings, and Table 4b's effects
within each size bucket."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mlic.effects import paired_effect
from mlic.errors import DataError
from mlic.plan import SETTINGS, Setting
from mlic.report.ablation import HEAD_LABELS, effect_columns, effect_table, planned_effects
from mlic.report.captions import describe, missing_line
from mlic.report.records import Collected, RunRecord, is_number
from mlic.report.stats import Summary, summarize
from mlic.report.table import Table

SIZE_COLUMNS = ("small", "medium", "large")  # keys of metrics.json's map_by_size


def sizes_of(record: RunRecord) -> tuple[dict[str, float] | None, str]:
    """({bucket: mAP or NaN}, "") from metrics.json's map_by_size; (None, why) without it."""
    path = record.path / "metrics.json"
    block = record.metrics.get("map_by_size")
    if block is None:
        return None, "no map_by_size in metrics.json (written before AP by object size existed)"
    if not isinstance(block, dict):
        raise DataError(f"{path}: 'map_by_size' is not a mapping")
    out = {}
    for bucket in SIZE_COLUMNS:
        entry = block.get(bucket)
        value = entry.get("map") if isinstance(entry, dict) else "missing"
        if value is not None and not is_number(value):
            raise DataError(f"{path}: map_by_size[{bucket!r}]['map'] = {value!r} is not a number")
        out[bucket] = math.nan if value is None else float(value)
    return out, ""


def size_rule(records: list[RunRecord]) -> str:
    """The buckets' definition and counts, as the records state them."""
    blocks = [
        r.metrics["map_by_size"] for r in records if isinstance(r.metrics.get("map_by_size"), dict)
    ]
    if not blocks:
        return ""
    first = blocks[0]

    def px2(limit: object) -> str:
        root = math.isqrt(int(limit))  # type: ignore[call-overload]
        return f"{root}² px" if root * root == limit else f"{limit:,} px²"

    try:
        (lo, hi), (w, h) = first["limits_px2"], first["reference_image_px"]
        fractions = [100 * float(f) for f in first["limits_fraction"]]
        rule = (
            "A positive (image, class) falls in the bucket of the class's largest instance in "
            f"that image: small < {px2(lo)}, medium < {px2(hi)}, large otherwise (COCO's "
            f"limits) at a {w}×{h} image, scaled by the image's area (< {fractions[0]:.2f} % "
            f"and < {fractions[1]:.2f} % of the image). In a bucket, positives of the other "
            "buckets are left out, negatives all count."
        )
    except (KeyError, TypeError, ValueError, IndexError):
        rule = "The records' map_by_size lacks its rule (limits_px2, reference_image_px)."

    def count(block: dict, bucket: str | None, key: str) -> int:
        entry = block.get(bucket) if bucket else block
        value = entry.get(key) if isinstance(entry, dict) else None
        return int(value) if is_number(value) else -1  # -1: the record does not say

    counts = sorted(
        {
            tuple((count(b, k, "num_positives"), count(b, k, "num_classes")) for k in SIZE_COLUMNS)
            + (count(b, None, "num_positives_without_area"),)
            for b in blocks
        }
    )
    described = [
        ", ".join(f"{k} {p:,} ({c})" for k, (p, c) in zip(SIZE_COLUMNS, entry[:3], strict=True))
        + (f", {entry[3]:,} of unknown area" if entry[3] > 0 else "")
        for entry in counts
    ]
    which = "the evaluated split" if len(counts) == 1 else "the runs' splits (they differ)"
    return (
        f"{rule} Positives per bucket (classes with positives) in {which}: {'; '.join(described)}."
    )


def chance_of(record: RunRecord, bucket: str) -> float:
    """The bucket's mAP at a random ranking (map_by_size's chance_map); NaN where unrecorded."""
    block = record.metrics.get("map_by_size")
    entry = block.get(bucket) if isinstance(block, dict) else None
    value = entry.get("chance_map") if isinstance(entry, dict) else None
    return float(value) if is_number(value) else math.nan


def table5_settings() -> list[Setting]:
    """Table 4's settings, then Table 2's larger input (the paper's answer to small objects)."""
    ablation = [s for s in SETTINGS if any(f.table == "table4" for f in s.feeds)]
    larger = [
        s for s in SETTINGS if any(f.table == "table2" for f in s.feeds) and s not in ablation
    ]
    return ablation + larger


def table5(collected: Collected) -> Table:
    """AP by object size (beyond the paper) for the settings of Tables 4 and 2, mean over
    seeds, with the small bucket's chance level: the floor that says whether it was learnt."""
    settings = table5_settings()
    rows, used = [], []
    for s in settings:
        records = collected.records.get(s.name, [])
        used += records
        sized, without, reasons = [], [], []
        for r in records:
            values, reason = sizes_of(r)
            if values is None:
                without.append(r.name)
            else:
                sized.append((r, values))
        if without:
            reasons.append(f"{reason}: {', '.join(without)}")
        out: dict[str, Any] = {
            "Backbone": "ResNeSt" if s.backbone == "resnest" else "ResNet",
            "Head": HEAD_LABELS.get(
                "dual-shared" if s.head == "dual" and s.batchformer == "shared" else s.head, s.head
            ),
            "Setting": s.name,
            "Input": ", ".join(
                f"{px} px" for px in sorted({r.get("data.image_size") for r in records} - {None})
            ),
        }
        for bucket in SIZE_COLUMNS:
            summary = Summary.of([v[bucket] for _, v in sized], [r.name for r, _ in sized])
            out[f"mAP, {bucket}"] = summary.mean
            out[f"{bucket}, std"], out[f"{bucket}, n"] = summary.std, summary.n
            if sized and summary.n == 0:
                reasons.append(f"no positives in the {bucket} bucket")
            if bucket == "small":  # every seed evaluates the same split: one chance level
                chances = [c for r, _ in sized if not math.isnan(c := chance_of(r, bucket))]
                out["small at chance"] = max(chances) if chances else math.nan
        whole = summarize([r for r, _ in sized], lambda r: r.map)
        out["mAP, all sizes"], out["all, std"], out["all, n"] = whole.mean, whole.std, whole.n
        out["Runs"] = whole.runs
        out["Note"] = "; ".join(reasons)
        rows.append(out)
    return Table(
        pd.DataFrame(rows),
        title=(
            "Table 5 (beyond the paper). AP by object size: mAP (%) per size bucket, "
            "Table 4's configurations and Table 2's larger input"
        ),
        caption=describe(used, collected.family, "COCO 2014", "448 and 576 px"),
        notes=[
            size_rule(used),
            "Each bucket's mAP averages the classes with positives in it; mean ± std over seeds. "
            '"all sizes" is the run\'s mAP (Tables 4 and 2). "small at chance" is the small '
            "bucket's mAP if every score were tied (the mean AP of a random ranking, recorded "
            "in metrics.json as map_by_size.small.chance_map): a small mAP near it means the "
            "small objects were not learnt.",
        ],
        missing=missing_line(collected, [s.name for s in settings]),
        summaries={
            **{f"mAP, {b}": (f"{b}, std", f"{b}, n") for b in SIZE_COLUMNS},
            "mAP, all sizes": ("all, std", "all, n"),
        },
        two_decimals=("small at chance",),
    )


def table5_effects(collected: Collected) -> Table:
    """Table 4b's effects within each size bucket: does a component help small objects more?"""
    sizes = {
        r.name: values
        for records in collected.records.values()
        for r in records
        if (values := sizes_of(r)[0]) is not None
    }
    rows = []
    for label, a, b, better_a, better_b in planned_effects():
        for bucket in SIZE_COLUMNS:
            by_seed = [
                {
                    r.seed: sizes[r.name][bucket]
                    for r in collected.records.get(name, [])
                    if r.name in sizes and not math.isnan(sizes[r.name][bucket])
                }
                for name in (a, b)
            ]
            e = paired_effect(*by_seed)
            rows.append(
                {"Effect": label, "Bucket": bucket, **effect_columns(e, better_a, better_b)}
            )
    return effect_table(
        rows,
        "Table 5 (second block). Table 4b's effects within each size bucket: mAP difference "
        "(points)",
        "mAP in that bucket",
        ["Seeds whose records lack the bucket's mAP (no map_by_size, no positives) are left out."],
    )
