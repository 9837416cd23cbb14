"""Smoke tests of the throughput benchmarks (issue 6), at a tiny CPU size; no timing is asserted.

The FLOP counter they report TFLOP/s with is checked against hand-computed counts, and its
meta-device shortcut against a count on real tensors.
"""

from __future__ import annotations

import csv
import importlib.util
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
    """The one prepared GPU script (issue 6) is run in its dry-run form, so that a session lent
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
    for name in ("train_step.md", "train_step.csv", "evaluate_speed.md", "evaluate_speed.csv",
                 "smoke_history.csv", "smoke_metrics.json", "gpu_check.log"):  # fmt: skip
        assert (out / name).is_file(), name
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back


def test_the_engine_imports_without_the_annotation_libraries(tmp_path):
    """The GPU image has neither pycocotools nor defusedxml; the benchmarks must not need them."""
    for name in ("pycocotools", "defusedxml"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} blocked')\n")
    code = "import mlic.engine, mlic.models, mlic.losses, mlic.data.coco"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)  # fmt: skip
    # Everything but the COCO reader imports; that one fails on the blocked package itself.
    assert proc.returncode == 1 and "pycocotools blocked" in proc.stderr, proc.stderr
    code = code.removesuffix(", mlic.data.coco")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
