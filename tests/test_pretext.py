"""The embedded plan's pretrained backbones: which pretext runs the plan makes, how the runs
find their weights, and that the weight file is exactly the pretext model's backbone."""

from __future__ import annotations

import json

import pytest
import torch

from mlic import pretext
from mlic.checkpoint import save_checkpoint
from mlic.config import load_config
from mlic.errors import CheckpointError
from mlic.models.build import build_model
from mlic.plan import FAMILIES, pretext_run_for, pretext_runs, runs
from mlic.reproduce import run_overrides

K = 24
TINY = {"d_model": 32, "nhead": 4, "dim_feedforward": 64}


def test_one_pretext_run_per_embedded_backbone_and_none_for_the_paper():
    assert pretext_runs("paper") == []
    made = pretext_runs("embedded")
    fam = FAMILIES["embedded"]
    assert [r.name for r in made] == [pretext.run_name(k) for k in fam.backbones]
    for run in made:
        cfg = load_config(run.preset, run.override_strings())
        assert cfg.data.dataset == "csv" and cfg.data.root.endswith("/pretext")
        assert cfg.model.head == "gap" and cfg.data.image_size == fam.image_sizes[448]
        assert cfg.model.backbone in fam.backbones.values() and not cfg.model.pretrained_file


def test_only_the_backbones_that_runs_to_train_need_are_pretrained():
    resnest_only = [r for r in runs("embedded") if "-resnest-" in r.name]
    assert [r.name for r in pretext_runs("embedded", needed=resnest_only)] == ["pretext-resnest"]
    assert pretext_runs("embedded", needed=[]) == []


def test_embedded_runs_load_their_backbones_pretext_weights(tmp_path):
    for run in runs("embedded"):
        ovr = run_overrides(run, "embedded", None, [], tmp_path)
        want = pretext.weights_path(tmp_path / "runs" / pretext_run_for(run))
        assert f"model.pretrained_file={want}" in ovr
        key = "resnest" if "-resnest-" in run.name else "resnet"
        assert pretext_run_for(run) == f"pretext-{key}"
    paper = runs("paper")[0]
    assert not any("pretrained_file" in o for o in run_overrides(paper, "paper", "/d", []))
    pre = pretext_runs("embedded")[0]  # the pretext run itself starts from scratch
    assert not any("pretrained_file" in o for o in run_overrides(pre, "embedded", None, []))


def test_the_weight_file_is_the_best_checkpoints_backbone_and_loads_strictly(tmp_path):
    torch.manual_seed(0)
    trained = build_model("resnet10t", "gap", K, pretrained=False, **TINY)
    run_dir = tmp_path / "pretext-resnet"
    (run_dir / "checkpoints").mkdir(parents=True)
    save_checkpoint(
        run_dir / "checkpoints/best.pt", {"model": trained.state_dict(), "weights": "ema"}
    )
    path = pretext.write_backbone_weights(run_dir)
    assert path == pretext.weights_path(run_dir) and not list(path.parent.glob("*.tmp"))
    loaded = build_model("resnet10t", "dual", K, pretrained_file=str(path), **TINY)
    for name, tensor in trained.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[name], tensor), name


def test_a_pretext_run_without_a_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="best.pt: the pretext run left no best") as info:
        pretext.write_backbone_weights(tmp_path)
    assert "\n" not in str(info.value)
    (tmp_path / "checkpoints").mkdir()
    save_checkpoint(tmp_path / "checkpoints/best.pt", {"model": {"head.weight": torch.zeros(1)}})
    with pytest.raises(CheckpointError, match="no backbone"):
        pretext.write_backbone_weights(tmp_path)


def test_a_missing_weight_file_retrains_the_pretext_run_only_when_a_run_needs_it(
    tmp_path, monkeypatch
):
    # A fresh clone: complete records, no checkpoints. Nothing to train -> no pretraining; a
    # run to train -> its backbone's pretext run first (its record is complete, its weights not).
    import mlic.reproduce as reproduce

    trained: list[str] = []
    monkeypatch.setattr(reproduce, "train_one", lambda name, *a: trained.append(name))
    monkeypatch.setattr(reproduce, "build_outputs", lambda *a: None)
    monkeypatch.setattr(reproduce, "ensure_embedded", lambda root: None)
    monkeypatch.setattr(reproduce.pretext, "write_backbone_weights", lambda run_dir: None)
    planned = runs("embedded", only="table3") + pretext_runs("embedded")
    for run in planned:
        run_dir = tmp_path / "runs" / run.name
        run_dir.mkdir(parents=True)
        ovr = run_overrides(run, "embedded", None, [], tmp_path)
        (run_dir / "config.yaml").write_text(load_config(run.preset, ovr).to_yaml())
        (run_dir / "metrics.json").write_text(json.dumps({"map": 1.0, "complete": True}))
    reproduce.reproduce("embedded", results=tmp_path, only=["table3"], jobs=1)
    assert trained == []
    (tmp_path / "runs" / "voc448-resnest-dual" / "metrics.json").unlink()
    reproduce.reproduce("embedded", results=tmp_path, only=["table3"], jobs=1)
    assert trained == ["pretext-resnest", "voc448-resnest-dual"]
