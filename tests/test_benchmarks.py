"""Smoke tests of the throughput benchmarks at a tiny CPU size; no timing is asserted.

The FLOP counter they report TFLOP/s with is checked against hand-computed counts, and its
meta-device shortcut against a count on real tensors.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TINY = [
    "--preset", "embedded",
    "--set", "model.backbone=resnet10t", "model.d_model=32", "model.dim_feedforward=64",
    "--image-size", "32", "--batch-size", "4",
]  # fmt: skip
TRAIN_COLUMNS = (
    "configuration", "device", "images/s", "TFLOP/s", "% of peak", "peak memory",
    "ratio to reference",
)  # fmt: skip


@pytest.fixture(scope="module")
def train_step():
    spec = importlib.util.spec_from_file_location("train_step", BENCH / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_step"] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["train_step"]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    # One thread: the CI machine has 2 cores shared with other jobs; oversubscribed threads
    # make tiny operations 10x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def _table_header(stdout: str) -> list[str]:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("| configuration"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_grouped_conv_backward_counts_each_gradient_once(train_step):
    # Forward: 2 * B * C_out * (C_in / groups) * k * k * H_out * W_out multiply-adds x 2.
    b, c_in, c_out, groups, k, size = 2, 8, 8, 4, 3, 6
    forward = 2 * b * c_out * (c_in // groups) * k * k * size * size
    weight = torch.randn(c_out, c_in // groups, k, k, requires_grad=True)
    for input_grad, expected in ((False, 2 * forward), (True, 3 * forward)):
        x = torch.randn(b, c_in, size, size, requires_grad=input_grad)
        with train_step.flop_counter() as counter:
            F.conv2d(x, weight, padding=1, groups=groups).sum().backward()
        assert counter.get_total_flops() == expected


def test_meta_device_count_equals_count_on_real_tensors(train_step):
    cfg = train_step.load_config(
        "embedded",
        ["model.backbone=resnet10t", "model.d_model=32", "model.dim_feedforward=64"]
        + ["data.image_size=32", "model.dropout=0"],
    )
    meta = train_step.count_train_flops(cfg, num_classes=80, batch_size=3)
    torch.manual_seed(0)
    model = train_step.build_model_from_config(cfg.model, 80).train()
    images, targets = torch.rand(3, 3, 32, 32), (torch.rand(3, 80) < 0.05).float()
    loss_fn = train_step.AsymmetricLoss()
    with train_step.sdpa_kernel(train_step.SDPBackend.MATH), train_step.flop_counter() as c:
        logits = model(images)  # [6, 80]: the dual head's two streams
        loss_fn(logits, targets.repeat(2, 1)).backward()
    assert meta == c.get_total_flops() > 0
    # The eval-mode forward has no BatchFormerV2 stream: less than a third of the training step.
    assert 0 < train_step.count_forward_flops(cfg, 80, 3) < meta / 3


def test_train_step_matrix_prints_and_writes_the_table(tmp_path):
    proc = _run("train_step.py", *TINY, "--steps", "2", "--warmup", "1", "--matrix",
                "--out", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    header = _table_header(proc.stdout)
    assert all(column in header for column in TRAIN_COLUMNS), header
    with (tmp_path / "train_step.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["reference"] == "True" and "reference" in rows[0]["configuration"]
    assert float(rows[0]["ratio_to_reference"]) == pytest.approx(1.0)
    assert len(rows) >= 4 and all(row["status"] == "ok" for row in rows)
    heads = {row["head"] for row in rows}
    assert heads == {"dual", "transformer"}
    for row in rows:
        assert float(row["images_per_s"]) > 0 and float(row["gflop_per_image"]) > 0
        assert float(row["loss_first"]) > 0  # ASL is positive
    # Same FLOPs per image for every dual-head row at the same batch size.
    dual = {row["gflop_per_image"] for row in rows if row["head"] == "dual"}
    assert len(dual) == 1
    assert (tmp_path / "train_step.md").read_text().count("\n| ") == len(rows) + 1


def test_evaluate_speed_prints_a_row_per_image_size(tmp_path):
    proc = _run("evaluate_speed.py", *TINY, "--image-sizes", "32", "64", "--steps", "2",
                "--warmup", "1", "--out", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    header = _table_header(proc.stdout)
    assert {"configuration", "image size", "images/s", "TFLOP/s", "peak memory"} <= set(header)
    with (tmp_path / "evaluate_speed.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["image_size"]) for r in rows] == [32, 64]
    # FLOPs grow with the number of pixels (the head's tokens too): 4x the pixels, > 3x the work.
    g32, g64 = (float(r["gflop_per_image"]) for r in rows)
    assert g64 > 3 * g32


@pytest.mark.parametrize(("lr", "code"), [("1e-3", 0), ("1e-30", 1)])
def test_the_loss_must_fall_over_a_full_length_run(train_step, capsys, lr, code):
    # No dropout: with lr = 1e-30 (the config refuses 0) no float32 weight moves, so the same
    # batch gives the same loss at every step, which must fail.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = [*TINY, "--set", f"train.lr={lr}", "model.dropout=0", "--no-reference"]
        assert train_step.main([*args, "--steps", "8", "--warmup", "2"]) == code
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert ("the loss did not fall" in err) == (code == 1), err


def test_gpu_check_script_runs_through_on_the_cpu(tmp_path, tiny_embedded_root):
    """The one prepared GPU script is run in its dry-run form, so that a session lent
    a GPU for 15 minutes does not spend them on a broken script."""
    out = tmp_path / "out"
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "DRY_RUN": "1", "PYTHON": sys.executable,
        "OUT": str(out), "SCRATCH": str(tmp_path), "EMBEDDED_ROOT": str(tiny_embedded_root),
    }  # fmt: skip
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "=== gpu_check: all steps passed" in proc.stdout
    for name in ("train_memory.md", "train_memory.csv", "train_step.md", "train_step.csv",
                 "profile.md", "evaluate_speed.md", "evaluate_speed.csv", "gpu_check.log"):  # fmt: skip
        assert (out / name).is_file(), name
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back
    with (out / "train_memory.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["reference"] for r in rows] == ["True", "False", "False"]
    presets = [(r["accumulation_steps"], r["checkpointing"], r["memory_limit_gib"]) for r in rows]
    assert presets[1:] == [("2", "none", "24.0"), ("4", "all", "8.0")]  # from the presets
    with (out / "train_step.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok"] * 4  # the dry run has no time budget
    assert all(float(r["ratio_to_reference"]) > 0 for r in rows)  # from train_memory.csv
    profile = (out / "profile.md").read_text()
    for part in ("forward", "backward", "optimizer", "EMA", "backbone", "BatchFormerV2 stream",
                 "decoder"):  # fmt: skip
        assert part in profile, part
    smoke = json.loads((tmp_path / "mlic-smoke" / "metrics.json").read_text())
    assert smoke["micro_batch_size"] == 16 and smoke["effective_batch_size"] == 32
    assert smoke["compiled"] is False  # the CPU: train.compile=auto stays eager


def test_the_engine_imports_without_the_annotation_libraries(tmp_path):
    """The GPU image has neither pycocotools nor defusedxml; the benchmarks must not need them."""
    for name in ("pycocotools", "defusedxml"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} blocked')\n")
    code = "import mlic.engine, mlic.fit, mlic.optim, mlic.models, mlic.losses, mlic.data.coco"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)  # fmt: skip
    # Everything but the COCO reader imports; that one fails on the blocked package itself.
    assert proc.returncode == 1 and "pycocotools blocked" in proc.stderr, proc.stderr
    code = code.removesuffix(", mlic.data.coco")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_ap_interpolation_measures_a_non_negative_gap():
    spec = importlib.util.spec_from_file_location("ap_interpolation", BENCH / "ap_interpolation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import numpy as np

    from mlic.metrics import average_precision

    # Ranked labels 1, 0, 0, 1, 1: precision at the positives 1, 2/4, 3/5 (non-interpolated
    # 70.0); the envelope lifts 2/4 to 3/5 (interpolated 73.33).
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    targets = np.array([[1], [0], [0], [1], [1]], dtype=bool)
    assert average_precision(scores, targets)[0] == pytest.approx(70.0)
    assert module.interpolated_ap(scores, targets)[0] == pytest.approx(100 * (1 + 0.6 + 0.6) / 3)
    assert module.class_frequencies().sum() == pytest.approx(2.9)
    probs, labels = module.make_problem(500, 3.0, seed=0)
    gap = module.interpolated_ap(probs, labels) - average_precision(probs, labels)
    assert (gap >= -1e-9).all() and gap.max() > 0

    proc = _run("ap_interpolation.py", "--images", "300", "--seeds", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| 300 |")]
    assert len(rows) == len(module.SEPARATIONS)
    assert all(float(r.split("|")[5].strip()) >= 0 for r in rows)


def test_activation_memory_counts_less_with_checkpointing():
    """benchmarks/activation_memory.py (meta device, no compute): the ratios the 8 GB preset's
    plan uses must order as checkpointing promises."""
    spec = importlib.util.spec_from_file_location(
        "activation_memory", BENCH / "activation_memory.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    count = {m: module.saved_bytes_per_image("embedded", m, batch=4) for m in module.MODES}
    assert 0 < count["all"] < min(count["backbone"], count["head"])
    assert max(count["backbone"], count["head"]) < count["none"]
