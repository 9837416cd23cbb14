"""The committed best.pt of the shipped runs: exactly those files are tracked, they load with the
checkpoint format checks, and `mlic evaluate` on them gives back their run records' numbers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mlic.plan import SHIPPED_WEIGHTS, runs
from mlic.runrecord import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "results" / "runs"
MAX_MB = 8  # per file: the repository stays small enough to clone quickly


def _ignored(path: Path) -> bool:
    """git check-ignore: exit 0 when ignored, 1 when not."""
    done = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", str(path.relative_to(ROOT))], cwd=ROOT
    )
    assert done.returncode in (0, 1), done
    return done.returncode == 0


def test_the_shipped_runs_are_the_headline_and_walkthrough_runs():
    headline = {r.name for r in runs("embedded", seeds=3) if r.setting == "coco448-resnest-dual"}
    assert set(SHIPPED_WEIGHTS) == headline
    notebook = json.loads((ROOT / "notebooks" / "walkthrough.ipynb").read_text())
    parameters = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    scope: dict = {}
    exec("".join(parameters["source"]), scope)  # plain assignments of literals
    assert Path(scope["run_dir"]).name in SHIPPED_WEIGHTS


def test_gitignore_lets_in_the_shipped_best_checkpoints_and_nothing_else():
    for run in SHIPPED_WEIGHTS:
        assert not _ignored(RUNS / run / "checkpoints" / "best.pt"), run
        assert _ignored(RUNS / run / "checkpoints" / "last.pt"), run
    others = [p.name for p in RUNS.iterdir() if p.is_dir() and p.name not in SHIPPED_WEIGHTS]
    assert others
    for run in others:
        assert _ignored(RUNS / run / "checkpoints" / "best.pt"), run
        assert _ignored(RUNS / run / "checkpoints" / "backbone.pt"), run


def test_shipped_checkpoints_are_the_records_best_epochs():
    from mlic.inference import load_trained

    for run in SHIPPED_WEIGHTS:
        path = RUNS / run / "checkpoints" / "best.pt"
        assert path.is_file(), f"{path} is missing: the shipped weights are committed"
        assert path.stat().st_size < MAX_MB * 2**20, f"{path}: over {MAX_MB} MB"
        best = read_metrics(RUNS / run)["best"]
        trained = load_trained(RUNS / run, device="cpu")  # format and architecture checks
        assert (trained.epoch, trained.weights) == (best["epoch"], best["weights"]), run


@pytest.mark.slow
@pytest.mark.parametrize("run", SHIPPED_WEIGHTS)
def test_evaluate_on_a_shipped_run_reproduces_its_metrics_json(run):
    """What a fresh clone's `mlic evaluate results/runs/RUN` prints is the committed record."""
    from mlic.evaluate import evaluate_checkpoint

    metrics = read_metrics(RUNS / run)
    again = evaluate_checkpoint(RUNS / run, device="cpu", progress=False)
    assert again["num_images"] == metrics["num_images"]
    assert again["map"] == metrics["best"]["map"] == metrics["map"]
    assert again["per_class_ap"] == metrics["best"]["per_class_ap"]
    assert again["weights"] == metrics["best"]["weights"]
