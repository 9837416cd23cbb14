"""The engine: a run record is written, resume is exact, failures are clear and safe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from mlic.checkpoint import load_checkpoint, save_checkpoint
from mlic.config import load_config
from mlic.data.embedded import GENERATOR_VERSION
from mlic.distributed import DistInfo, ShardSampler, gather_by_index
from mlic.engine import NonFiniteLoss
from mlic.errors import CheckpointError, MlicError
from mlic.evaluate import evaluate_checkpoint
from mlic.fit import fit
from mlic.runrecord import HISTORY_COLUMNS, run_lock

TINY = [
    "data.image_size=32",
    "data.num_workers=0",
    "data.max_train_images=48",
    "data.max_val_images=32",
    "model.d_model=32",
    "model.dim_feedforward=64",
    "train.batch_size=8",
    "train.eval_batch_size=16",
    # the paper's augmentations, which the embedded preset turns off: keep them under test
    "data.randaugment=true",
    "data.cutmix_prob=0.5",
]


def tiny_config(root: Path, *extra: str):
    return load_config("embedded", [*TINY, f"data.embedded_root={root}", *extra])


@pytest.fixture(scope="module")
def finished_run(tiny_embedded_root, tmp_path_factory):
    """One uninterrupted two-epoch run, shared by several tests."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = tiny_config(tiny_embedded_root, "train.epochs=2", "train.log_iteration_loss=true")
    metrics = fit(cfg, run_dir, progress=False)
    return cfg, run_dir, metrics


def test_run_record_is_complete(finished_run):
    cfg, run_dir, metrics = finished_run
    assert (run_dir / "config.yaml").is_file()
    assert load_config(path=run_dir / "config.yaml") == cfg
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1, 2]
    assert history["train_loss"].notna().all() and (history["images_per_s"] > 0).all()
    iterations = pd.read_csv(run_dir / "iterations.csv")
    assert len(iterations) == 2 * (48 // 8)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["complete"] is True
    assert cfg.data.is_embedded and saved["embedded_generator"] == GENERATOR_VERSION
    assert saved["weights"] in ("model", "ema")
    assert saved["map"] == max(saved["map_model"], saved["map_ema"])
    # The top level is the best epoch of max(model, EMA), as Query2Label and ASL report it;
    # "best" and "last" hold both epochs in full.
    per_epoch = history[["map", "map_ema"]].max(axis=1)
    best, last = saved["best"], saved["last"]
    assert best["epoch"] == int(history["epoch"][per_epoch.idxmax()])
    assert saved["map"] == best["map"] == pytest.approx(per_epoch.max(), abs=1e-3)
    assert last["epoch"] == 2 and last["map"] == pytest.approx(per_epoch.iloc[-1], abs=1e-3)
    for record in (best, last):
        assert record["weights"] in ("model", "ema")
        assert record["map"] == max(record["map_model"], record["map_ema"])
        assert {"cf1", "of1", "cp_top3", "per_class_ap", "num_images"} <= set(record)
    assert {k: v for k, v in best.items() if k != "epoch"} == {
        k: saved[k] for k in best if k != "epoch"
    }
    assert saved["num_images"] == 32 and saved["epochs"] == 2
    assert len(saved["per_class_ap"]) >= 20
    for key in ("versions", "git_commit", "device", "seed", "image_size", "dataset"):
        assert key in saved
    assert metrics == saved
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "checkpoints" / "best.pt").is_file()


def test_resume_after_a_kill_mid_epoch_gives_the_same_metrics(
    finished_run, tiny_embedded_root, tmp_path, monkeypatch
):
    _, _, uninterrupted = finished_run
    cfg = tiny_config(tiny_embedded_root, "train.epochs=2", "train.log_iteration_loss=true")

    import mlic.fit as fitting

    real_loss = fitting.AsymmetricLoss
    calls = {"n": 0}

    class DiesMidEpoch2(real_loss):
        def forward(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 6 + 3:  # third iteration of the second epoch (6 per epoch)
                raise KeyboardInterrupt  # what a kill looks like from inside the loop
            return super().forward(*args, **kwargs)

    monkeypatch.setattr(fitting, "AsymmetricLoss", DiesMidEpoch2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path, progress=False)
    assert not (tmp_path / "metrics.json").exists()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1

    monkeypatch.setattr(fitting, "AsymmetricLoss", real_loss)
    with pytest.raises(MlicError, match="--resume"):
        fit(cfg, tmp_path, progress=False)
    resumed = fit(cfg, tmp_path, resume=True, progress=False)
    for key in ("map", "map_model", "map_ema", "per_class_ap", "of1", "cf1"):
        assert resumed[key] == uninterrupted[key], key
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["epoch"].tolist() == [1, 2]


def test_resume_refuses_a_different_configuration(finished_run, tiny_embedded_root):
    _, run_dir, _ = finished_run
    other = tiny_config(
        tiny_embedded_root, "train.epochs=2", "train.log_iteration_loss=true", "train.lr=0.5"
    )
    with pytest.raises(MlicError, match="train.lr"):
        fit(other, run_dir, resume=True, progress=False)


def test_second_writer_is_refused(tiny_embedded_root, tmp_path):
    cfg = tiny_config(tiny_embedded_root, "train.epochs=1")
    with run_lock(tmp_path), pytest.raises(MlicError, match="another process"):
        fit(cfg, tmp_path, progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tiny_embedded_root, tmp_path, monkeypatch
):
    import mlic.fit as fitting

    real_loss = fitting.AsymmetricLoss
    calls = {"n": 0}

    class Diverges(real_loss):
        def forward(self, *args, **kwargs):
            calls["n"] += 1
            loss = super().forward(*args, **kwargs)
            return loss * float("nan") if calls["n"] > 6 else loss

    monkeypatch.setattr(fitting, "AsymmetricLoss", Diverges)
    cfg = tiny_config(tiny_embedded_root, "train.epochs=2")
    with pytest.raises(NonFiniteLoss, match="epoch 2"):
        fit(cfg, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "metrics.json").exists()


def test_evaluate_checkpoint_reproduces_the_run(finished_run):
    # `mlic evaluate RUN` loads best.pt: exactly the best epoch's weights and mAP.
    _, run_dir, metrics = finished_run
    again = evaluate_checkpoint(run_dir, device="cpu")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert again["num_images"] == metrics["num_images"]
    assert again["map"] == metrics["best"]["map"] == metrics["map"] == best["map"]
    assert again["per_class_ap"] == metrics["best"]["per_class_ap"]
    assert again["weights"] == metrics["best"]["weights"] == best["weights"]
    assert best["epoch"] == metrics["best"]["epoch"] == again["epoch"]


def test_best_is_the_best_epoch_not_the_last(tiny_embedded_root, tmp_path, monkeypatch):
    """Epoch 1 is made to look best (its mAP raised by 50 points): metrics.json's top level and
    "best" are epoch 1, "last" is epoch 2, and best.pt holds epoch 1's weights."""
    import mlic.fit as fitting

    real_evaluate = fitting.evaluate
    calls = {"n": 0}

    def evaluate(model, dataset, cfg, rt, progress=False):
        calls["n"] += 1  # two calls per epoch: model, then EMA
        out = real_evaluate(model, dataset, cfg, rt, progress)
        return {**out, "map": out["map"] + 50.0} if calls["n"] <= 2 else out

    monkeypatch.setattr(fitting, "evaluate", evaluate)
    metrics = fit(tiny_config(tiny_embedded_root, "train.epochs=2"), tmp_path, progress=False)
    assert metrics["best"]["epoch"] == 1 and metrics["last"]["epoch"] == 2
    assert metrics["map"] == metrics["best"]["map"] > 50.0 > metrics["last"]["map"]
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == 1
    monkeypatch.setattr(fitting, "evaluate", real_evaluate)
    again = evaluate_checkpoint(tmp_path, device="cpu")
    assert again["map"] == pytest.approx(metrics["best"]["map"] - 50.0, abs=1e-9)
    assert again["per_class_ap"] == metrics["best"]["per_class_ap"]  # epoch 1's weights
    assert again["per_class_ap"] != metrics["last"]["per_class_ap"]


def test_metrics_json_holds_map_by_size_for_the_reported_weights(finished_run):
    cfg, run_dir, metrics = finished_run
    from mlic.data.build import build_dataset
    from mlic.metrics import SIZE_BUCKETS, size_bucket

    saved = json.loads((run_dir / "metrics.json").read_text())
    sizes = saved["map_by_size"]
    # The counts are the validation split's, bucketed by its largest instances.
    val = build_dataset(cfg.data, "val")
    bucket = size_bucket(val.largest_area_fraction)
    positive = (val.targets == 1) & ~val.ignore
    for b, name in enumerate(SIZE_BUCKETS):
        assert sizes[name]["num_positives"] == int((positive & (bucket == b)).sum())
        assert sizes[name]["map"] is None or 0.0 <= sizes[name]["map"] <= 100.0
    assert sum(sizes[name]["num_positives"] for name in SIZE_BUCKETS) == int(positive.sum())
    assert sizes["limits_px2"] == [1024, 9216]
    # `mlic evaluate` reports it for the checkpoint it evaluates.
    again = evaluate_checkpoint(run_dir, device="cpu")
    assert {k: again["map_by_size"][k]["num_positives"] for k in SIZE_BUCKETS} == {
        k: sizes[k]["num_positives"] for k in SIZE_BUCKETS
    }


def test_bad_checkpoints_are_refused(finished_run, tmp_path):
    _, run_dir, _ = finished_run
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        evaluate_checkpoint(junk)
    with pytest.raises(CheckpointError, match="no such"):
        evaluate_checkpoint(tmp_path / "missing.pt")

    # A checkpoint whose weights belong to another architecture.
    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    state["config"]["model"]["d_model"] = 64
    state["config"]["model"]["dim_feedforward"] = 128
    other = tmp_path / "other.pt"
    save_checkpoint(other, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(CheckpointError, match="architecture|do not fit"):
        evaluate_checkpoint(other)

    # A pickle that is not weights-only is refused by torch.load(weights_only=True).
    evil = tmp_path / "evil.pt"
    torch.save({"format": "mlic-checkpoint-1", "x": object()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        evaluate_checkpoint(evil)


def test_shard_sampler_covers_every_index_once():
    n, world = 10, 3
    seen = sorted(i for r in range(world) for i in ShardSampler(n, r, world))
    assert seen == list(range(n))
    indices = torch.tensor([4, 0, 2, 1, 3])
    values = indices.float() * 10
    (ordered,) = gather_by_index(indices, [values], DistInfo())
    assert ordered.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    with pytest.raises(RuntimeError, match="lost or repeated"):
        gather_by_index(torch.tensor([0, 0, 2]), [values[:3]], DistInfo())


def test_cli_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "mlic", *args], capture_output=True, text=True, cwd=tmp_path
        )

    bad_key = run("train", "--set", "train.epoch=1", "--run-dir", str(tmp_path / "r"))
    assert bad_key.returncode == 2
    assert bad_key.stderr.strip().count("\n") == 0 and "train.epoch" in bad_key.stderr
    assert "Traceback" not in bad_key.stderr
    bad_type = run("train", "--set", "train.epochs=many")
    assert bad_type.returncode == 2 and "train.epochs" in bad_type.stderr
    missing = run("evaluate", str(tmp_path / "nothing.pt"))
    assert missing.returncode == 2 and "nothing.pt" in missing.stderr
    presets = run("presets")
    assert presets.returncode == 0 and "paper-coco-448" in presets.stdout


def test_torchrun_two_processes_count_every_image_once(tiny_embedded_root, tmp_path):
    """`mlic train` runs unchanged under torchrun (gloo on the CPU); evaluation over two ranks
    sees each validation image exactly once, including with an odd number of images."""
    run_dir = tmp_path / "ddp"
    overrides = [
        *TINY,
        f"data.embedded_root={tiny_embedded_root}",
        "train.epochs=1",
        "data.max_val_images=31",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            "-m",
            "mlic",
            "train",
            "--set",
            *overrides,
            "--run-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_images"] == 31 and metrics["world_size"] == 2
    # The same weights evaluated in one process give the same mAP: nothing lost or repeated.
    single = evaluate_checkpoint(run_dir / "checkpoints" / "last.pt", device="cpu", max_images=31)
    assert single["num_images"] == 31
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["history"][-1]["map"] == pytest.approx(single["map"], abs=1e-6)


@pytest.mark.parametrize(
    ("exempt", "decayed_1d", "decayed_queries"),
    [("none", True, True), ("norm_bias", False, True), ("norm_bias_queries", False, False)],
)
def test_weight_decay_exemption_policies(exempt, decayed_1d, decayed_queries):
    from mlic.models import build_model
    from mlic.optim import param_groups

    model = build_model("resnet10t", "dual", 5, d_model=32, dim_feedforward=64)
    groups = param_groups(model, 0.01, exempt)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    everything = [p for g in groups for p in g["params"]]
    assert len(everything) == len({id(p) for p in everything}) == len(list(model.parameters()))
    named = dict(model.named_parameters())
    one_d = [p for n, p in named.items() if p.ndim == 1 or n.endswith(".bias")]
    queries = [p for n, p in named.items() if "query_embed" in n]
    assert one_d and queries
    assert all((id(p) in decayed) == decayed_1d for p in one_d)
    assert all((id(p) in decayed) == decayed_queries for p in queries)
    assert all(id(p) in decayed for n, p in named.items() if p.ndim > 1 and "embed" not in n)
    if exempt == "none":
        assert len(groups) == 1 and groups[0]["weight_decay"] == 0.01


def test_a_checkpoint_without_the_best_record_is_refused_on_resume(finished_run, tmp_path):
    import shutil

    cfg, run_dir, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    state = load_checkpoint(copy / "checkpoints" / "last.pt")
    del state["best"]  # as written before metrics.json held the best epoch
    save_checkpoint(
        copy / "checkpoints" / "last.pt", {k: v for k, v in state.items() if k != "format"}
    )
    (copy / "metrics.json").unlink()  # killed before its end: a finished run is not resumed
    with pytest.raises(MlicError, match="older mlic") as info:
        fit(cfg, copy, resume=True, progress=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("preset", "wanted"), [("paper-coco-448", 1e-4), ("paper-voc-448", 1e-4), ("embedded", None)]
)
def test_the_batchformer_layer_has_the_official_weight_decay(preset, wanted):
    """Paper presets: the official BatchFormerV2 code's `--bt_decay` 1e-4 for its layer, 1e-2 for
    every other parameter; unset (the embedded preset), the layer decays like the rest."""
    from mlic.config import load_config
    from mlic.models import build_model
    from mlic.optim import param_groups

    cfg = load_config(preset).train
    assert cfg.batchformer_weight_decay == wanted
    model = build_model("resnet10t", "dual", 5, d_model=32, dim_feedforward=64)
    groups = param_groups(
        model, cfg.weight_decay, cfg.weight_decay_exempt, cfg.batchformer_weight_decay
    )
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(decay_of) == len(named)
    layer = {n for n in named if n.startswith("head.encoder.batch_layer.")}
    assert layer
    exempt = {
        id(p)
        for g in param_groups(model, 1.0, cfg.weight_decay_exempt)
        for p in g["params"]
        if g["weight_decay"] == 0
    }
    for name, p in named.items():
        if id(p) in exempt:
            assert decay_of[id(p)] == 0.0, name
        elif name in layer and wanted is not None:
            assert decay_of[id(p)] == wanted, name
        else:
            assert decay_of[id(p)] == cfg.weight_decay, name
    if wanted is not None:  # the paper presets decay everything else at 1e-2
        assert cfg.weight_decay == 1e-2
        assert {decay_of[id(named[n])] for n in layer} == {1e-4}
