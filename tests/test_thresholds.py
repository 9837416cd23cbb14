"""Per-class thresholds: the F1 rule against a brute-force oracle, the per-class metrics, the
thresholds file and its checks, the held-out calibration part, and `mlic calibrate`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mlic.cli import main
from mlic.data.holdout import holdout_rows
from mlic.errors import ConfigError
from mlic.metrics import threshold_metrics, threshold_metrics_per_class
from mlic.thresholds import ThresholdsError, f1_thresholds, read_thresholds


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = (pred & truth).sum()
    return 2 * tp / (pred.sum() + truth.sum()) if pred.sum() + truth.sum() else 0.0


def test_f1_thresholds_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    # Rounded scores: many ties, which must fall on one side of every threshold.
    scores = rng.random((60, 5)).round(1).astype(np.float32)
    targets = (rng.random((60, 5)) < 0.3).astype(np.float32)
    targets[:, 4] = 0  # a class without positives keeps the default
    thresholds, best = f1_thresholds(scores, targets)
    for c in range(4):
        truth = targets[:, c] > 0
        candidates = np.unique(scores[:, c])
        oracle = max(_f1(scores[:, c] >= t, truth) for t in candidates)
        assert best[c] == pytest.approx(100 * oracle)
        assert _f1(scores[:, c] >= thresholds[c], truth) == pytest.approx(oracle)
        # the threshold lies strictly between a kept and a dropped score (or at the lowest)
        assert thresholds[c] not in set(candidates[candidates > scores[:, c].min()].tolist())
    assert thresholds[4] == 0.5 and np.isnan(best[4])


def test_f1_thresholds_hand_case():
    scores = np.array([[0.9], [0.8], [0.7], [0.2]])
    targets = np.array([[1], [0], [1], [0]])
    thresholds, best = f1_thresholds(scores, targets)
    # cut after 0.7: TP 2, predicted 3 -> F1 = 4/5; the midpoint of 0.7 and 0.2
    assert thresholds[0] == pytest.approx(0.45) and best[0] == pytest.approx(80.0)


def test_per_class_threshold_metrics():
    rng = np.random.default_rng(1)
    probs = rng.random((40, 4))
    targets = (rng.random((40, 4)) < 0.4).astype(int)
    same = threshold_metrics_per_class(probs, targets, np.full(4, 0.3))
    assert same == pytest.approx(threshold_metrics(probs, targets, 0.3))
    th = np.array([0.1, 0.5, 0.7, 0.95])
    got = threshold_metrics_per_class(probs, targets, th)
    pred = probs >= th
    tp = (pred & (targets > 0)).sum(0)
    cp = np.mean(tp / np.maximum(pred.sum(0), 1))
    cr = np.mean(tp / targets.sum(0))
    assert got["cp"] == pytest.approx(100 * cp) and got["cr"] == pytest.approx(100 * cr)
    assert got["op"] == pytest.approx(100 * tp.sum() / pred.sum())
    with pytest.raises(ValueError, match=r"\[K\]"):
        threshold_metrics_per_class(probs, targets, th[:3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold_metrics_per_class(probs, targets, th + 0.5)


def test_holdout_is_fixed_disjoint_and_complete():
    kept, held = holdout_rows(50, 0.2, seed=3)
    assert len(held) == 10 and len(kept) == 40
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(50))
    again = holdout_rows(50, 0.2, seed=3)
    assert (again[1] == held).all()
    assert not (holdout_rows(50, 0.2, seed=4)[1] == held).all()
    with pytest.raises(ConfigError):
        holdout_rows(1, 0.5, seed=0)


def test_training_writes_thresholds_for_the_checkpoint_that_predict_loads(tiny_run):
    from mlic.inference import load_trained

    record = json.loads((tiny_run / "thresholds.json").read_text())
    assert record["chosen_on"]["kind"] == "val" and record["chosen_on"]["split"] == "val2014"
    assert "optimistic" in record["optimistic_note"]
    trained = load_trained(tiny_run, device="cpu")
    assert record["class_names"] == trained.class_names
    assert record["checkpoint"]["file"] == trained.checkpoint.name
    assert record["checkpoint"]["epoch"] == trained.epoch
    read_thresholds(tiny_run / "thresholds.json", trained)  # consistent: no error


def test_stale_or_broken_thresholds_are_refused(tiny_run, tmp_path):
    from mlic.inference import load_trained

    trained = load_trained(tiny_run, device="cpu")
    record = json.loads((tiny_run / "thresholds.json").read_text())
    path = tmp_path / "thresholds.json"
    cases = {
        "epoch": {**record, "checkpoint": {**record["checkpoint"], "epoch": 99}},
        "other classes": {**record, "class_names": record["class_names"][:-1]},
        "not a number in": {**record, "thresholds": {**record["thresholds"], "x": 2}}
        | {"class_names": [*record["class_names"][:-1], "x"]},
    }
    for needle, content in cases.items():
        path.write_text(json.dumps(content))
        with pytest.raises(ThresholdsError, match=needle) as info:
            read_thresholds(path, trained)
        assert "\n" not in str(info.value)
    path.write_text("{not json")
    with pytest.raises(ThresholdsError, match="not valid JSON"):
        read_thresholds(path, trained)
    with pytest.raises(ThresholdsError, match="mlic calibrate"):
        read_thresholds(tmp_path / "missing.json", trained)


def test_calibration_fraction_holds_images_out_of_training(tiny_embedded_root, tmp_path):
    from conftest import TINY_RUN

    from mlic.config import load_config
    from mlic.fit import fit

    cfg = load_config(
        "embedded",
        [*TINY_RUN, f"data.embedded_root={tiny_embedded_root}", "data.calibration_fraction=0.25"],
    )
    fit(cfg, tmp_path / "run", progress=False)
    record = json.loads((tmp_path / "run" / "thresholds.json").read_text())
    on = record["chosen_on"]
    assert on["kind"] == "train_holdout" and on["split"] == "train2014"
    assert on["num_images"] == 12 and on["fraction"] == 0.25  # 0.25 of 48
    # trained on the other 36: 36 // 8 = 4 full batches
    import pandas as pd

    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["images_per_s"].iloc[0] > 0
    with pytest.raises(ConfigError, match="calibration_fraction"):
        load_config("embedded", ["data.calibration_fraction=1.0"])


def _mlic(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlic", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_calibrate_command_and_its_bad_inputs(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "thresholds.json").unlink()
    ok = _mlic("calibrate", str(run), "--device", "cpu")
    assert ok.returncode == 0, ok.stderr
    assert "validation split 'val2014'" in ok.stdout and "optimistic" in ok.stdout
    assert json.loads((run / "thresholds.json").read_text())["format"] == "mlic-thresholds-1"
    before = (run / "thresholds.json").read_bytes()

    for args, needle in [
        ((str(tmp_path / "nowhere"),), "no such checkpoint"),
        ((str(run), "--split", "nosuchsplit"), "instances_nosuchsplit.json"),
        ((str(run), "--out", str(tmp_path)), "is a folder"),
    ]:
        code = main(["calibrate", *args, "--device", "cpu"])  # in process: fast
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2, lines
        assert len(lines) == 1 and lines[0].startswith("mlic: error:") and needle in lines[0], lines
    assert (run / "thresholds.json").read_bytes() == before  # nothing half-written
    assert not list(run.glob(".thresholds.json.*"))


def test_evaluate_reports_both_thresholds_and_skips_stale_ones(tiny_run, tmp_path, capsys):
    from mlic.cli import main
    from mlic.evaluate import evaluate_checkpoint

    m = evaluate_checkpoint(tiny_run, device="cpu", progress=False)
    tuned = m["tuned"]
    assert tuned["chosen_on_this_split"] is True and tuned["cf1"] is not None
    record = json.loads((tiny_run / "thresholds.json").read_text())
    assert tuned["cf1"] == pytest.approx(record["metrics_on_chosen_images"]["cf1"])
    assert main(["evaluate", str(tiny_run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "at 0.5" in out and "tuned" in out and "(this split: optimistic)" in out
    # last.pt of the same run: the thresholds belong to best.pt, so they are not applied
    m = evaluate_checkpoint(tiny_run / "checkpoints" / "last.pt", device="cpu", progress=False)
    if (tiny_run / "checkpoints" / "best.pt").is_file():
        assert "best.pt" in m["tuned"]["unavailable"]
