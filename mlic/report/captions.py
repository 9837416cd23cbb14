"""The words under each table: what the runs were (from their config.yaml) and what is missing."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from mlic import pretext
from mlic.report.records import Collected, RunRecord

DATASET_NAMES = {"coco": "COCO 2014", "voc": "VOC 2007"}


def start_weights(record: RunRecord) -> str:
    """Where a run's backbone weights came from, in a caption's words."""
    file = record.get("model.pretrained_file")
    if file:
        parent = Path(str(file)).parent.parent.name  # <run>/checkpoints/backbone.pt
        if parent.startswith(pretext.PREFIX):
            return "pretrained on the embedded pretext tree"
        return f"weights from {Path(str(file)).name}"
    return "ImageNet weights" if record.get("model.pretrained") else "from scratch"


def describe(records: list[RunRecord], family: str, paper_data: str, paper_size: str) -> str:
    """One caption line about this replication's runs, from their config.yaml."""
    if not records:
        return f"This replication: no complete run record yet ({family} family; see Missing)."

    def values(key: str, only: Callable[[RunRecord], bool] = lambda r: True) -> str:
        found = {r.get(key) for r in records if only(r) and r.get(key) is not None}
        try:
            ordered = sorted(found)  # numbers in numeric order
        except TypeError:
            ordered = sorted(found, key=str)
        return ", ".join(str(v) for v in ordered)

    backbones = values("model.backbone")
    sizes = values("data.image_size")
    d_model = values("model.d_model", lambda r: r.get("model.head") != "gap")
    epochs = values("train.epochs")
    starts = ", ".join(sorted({start_weights(r) for r in records}))
    details = f"backbones {backbones} ({starts}); input {sizes} px (paper: {paper_size})"
    if d_model:
        details += f"; d_model {d_model}"
    if epochs:
        details += f"; {epochs} epochs"
    if all(not r.get("data.root") for r in records):
        return (
            f"This replication: scaled-down runs on the generated embedded dataset, "
            f"not {paper_data} ({details}). Its numbers are not comparable with the paper's "
            "in absolute terms; compare the differences between rows."
        )
    datasets = values("data.dataset")
    splits = sorted({str(r.metrics.get("split")) for r in records if r.metrics.get("split")})
    images = sorted({int(r.metrics["num_images"]) for r in records if r.metrics.get("num_images")})
    where = " / ".join(DATASET_NAMES.get(d, d) for d in datasets.split(", "))
    if splits:
        where += f", split {', '.join(splits)}"
    if images:
        where += f" ({', '.join(f'{i:,}' for i in images)} images)"
    return f"This replication: {where}; {details}."


def missing_line(collected: Collected, settings: list[str]) -> str:
    """The line listing the missing runs of `settings` with their reasons; empty when none is."""
    items = [
        f"{name} ({reason})"
        for name, reason in sorted(collected.missing.items())
        if re.sub(r"-seed\d+$", "", name) in settings
    ]
    return f"Missing runs: {'; '.join(items)}." if items else ""
