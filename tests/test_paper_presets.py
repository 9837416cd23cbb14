"""The paper presets' own path, end to end on the CPU: `mlic train --preset paper-... --data-root`
on real COCO/VOC folder layouts (the tiny embedded dataset's trees), with the model shrunk.

A GPU user is the first to run these presets at full size; everything but the size is checked
here: the data root, the standard split names, the workers, the dual head, the run record and
`mlic evaluate` on its checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHRUNK = [
    "model.backbone=resnet10t", "model.pretrained=false", "model.d_model=32",
    "model.dim_feedforward=64", "data.image_size=32", "data.num_workers=1",
    "train.epochs=1", "train.batch_size=8", "train.eval_batch_size=16",
]  # fmt: skip


def _mlic(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mlic", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    ("preset", "tree", "dataset", "val_split"),
    [("paper-coco-448", "coco", "coco", "val2014"), ("paper-voc-448", "voc", "voc", "test")],
)
def test_a_paper_preset_trains_and_evaluates_from_a_data_root(
    tiny_embedded_root, tmp_path, preset, tree, dataset, val_split
):
    run_dir = tmp_path / "run"
    trained = _mlic("train", "--preset", preset, "--data-root", str(tiny_embedded_root / tree),
                    "--set", *SHRUNK, "--run-dir", str(run_dir), cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is True and metrics["embedded"] is False
    assert metrics["dataset"] == dataset and metrics["head"] == "dual"
    assert metrics["num_images"] == 32  # the whole validation split of the tiny trees
    assert 0.0 <= metrics["map"] <= 100.0
    # AP by object size from the tree's own areas (COCO `area`, VOC boxes): every positive has one.
    sizes = metrics["map_by_size"]
    assert sizes["num_positives_without_area"] == 0
    assert sum(sizes[b]["num_positives"] for b in ("small", "medium", "large")) > 0
    evaluated = _mlic("evaluate", str(run_dir), "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads(evaluated.stdout)
    assert again["split"] == val_split
    assert again["map"] == pytest.approx(metrics["map"], abs=1e-9)


def test_reproduce_with_the_paper_preset_and_a_data_root_runs_through(tiny_embedded_root, tmp_path):
    """The mission's first command in its GPU form (`mlic reproduce --preset paper --data-root`),
    shrunk: it trains, reports and executes the notebooks; the report refuses the shrunk
    records as the paper's configuration and says why, instead of filling the paper's cells."""
    results = tmp_path / "results"
    pages = {p: (ROOT / p).read_bytes() for p in ("README.md", "docs/results.md")}
    shrunk = [s for s in SHRUNK if s != "data.num_workers=1"] + ["data.num_workers=0"]
    proc = _mlic("reproduce", "--preset", "paper", "--data-root", str(tiny_embedded_root),
                 "--only", "table3", "--results", str(results), "--set", *shrunk,
                 cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("voc448-resnet-gap", "voc448-resnest-dual"):
        metrics = json.loads((results / "runs" / name / "metrics.json").read_text())
        assert metrics["complete"] is True and metrics["dataset"] == "voc"
        assert (results / "executed" / f"train-{name}.ipynb").is_file()
    table3 = (results / "tables" / "table3.md").read_text()
    missing = (
        "voc448-resnest-dual (not the paper plan's configuration, data.image_size: 32 (plan: 448)"
    )
    assert missing in table3
    assert (results / "executed" / "tables.ipynb").is_file()
    # Only the embedded default into the repository's results/ updates the results page.
    assert {p: (ROOT / p).read_bytes() for p in pages} == pages
