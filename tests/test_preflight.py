"""`mlic data check`: what a run needs and what is missing, before any model is built, against
stand-in COCO / VOC trees (tests/standins.py) and the measured GPU figures."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from standins import coco_archives, voc_archives

from mlic import measurements, preflight
from mlic.cli import main
from mlic.config import load_config
from mlic.preflight import Counts, check_configs, epoch_time, memory_need


def _unzip(blob: bytes, root: Path) -> None:
    zipfile.ZipFile(io.BytesIO(blob)).extractall(root)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """DIR with coco/ and voc/VOC2007/ as `mlic data coco|voc` lays them out; read-only."""
    import tarfile

    root = tmp_path_factory.mktemp("standin")
    for blob in coco_archives().values():
        _unzip(blob, root / "coco")
    for blob in voc_archives().values():
        with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
            tf.extractall(root / "voc", filter="data")
    (root / "voc" / "VOCdevkit").rename(root / "voc" / "devkit")
    (root / "voc" / "devkit" / "VOC2007").rename(root / "voc" / "VOC2007")
    return root


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _unreachable(repo, filename):
    raise ConnectionError("no network in tests")


def _check(preset: str, root: Path, *overrides: str, **kwargs) -> list[preflight.Finding]:
    cfg = load_config(preset, [f"data.root={root}", *overrides])
    kwargs.setdefault("probe", _unreachable)
    return check_configs([(cfg.name, cfg)], **kwargs)


def _texts(findings, status=None, topic=None) -> list[str]:
    return [f.text for f in findings if status in (None, f.status) and topic in (None, f.topic)]


def test_a_complete_stand_in_tree_has_no_data_failures_and_says_it_is_small(data_root):
    findings = _check("paper-coco-448", data_root / "coco", "model.pretrained=false")
    assert _texts(findings, "FAIL") == []
    warned = " ".join(_texts(findings, "warn", "data"))
    assert "train2014: 6 images" in warned and "82,783" in warned and "40,504" in warned
    assert any("all 4 images decode" in t for t in _texts(findings, "ok", "data"))
    findings = _check("paper-voc-448", data_root / "voc", "model.pretrained=false")
    warned = " ".join(_texts(findings, "warn", "data"))
    assert "5,011" in warned and "4,952" in warned and _texts(findings, "FAIL") == []


def test_the_check_builds_no_model(data_root, monkeypatch):
    import timm

    def refuse(*args, **kwargs):
        raise AssertionError("the preflight built a model")

    monkeypatch.setattr(timm, "create_model", refuse)
    monkeypatch.setattr("mlic.models.build_model", refuse)
    _check("paper-coco-448", data_root / "coco")


def test_missing_images_and_annotations_are_failures_with_the_fetch_command(data_root, tmp_path):
    coco = _copy(data_root / "coco", tmp_path / "coco")
    for path in sorted((coco / "val2014").glob("*.jpg"))[:2]:
        path.unlink()
    (coco / "annotations" / "instances_train2014.json").unlink()
    failed = _texts(_check("paper-coco-448", coco), "FAIL", "data")
    assert len(failed) == 2
    assert "instances_train2014.json: annotation file not found" in failed[0]
    assert f"mlic data coco --root {coco} --download" in failed[0]
    assert "2 of 4 image files are missing" in failed[1]
    failed = _texts(_check("paper-coco-448", tmp_path / "nowhere"), "FAIL", "data")
    assert failed and "not found" in failed[0] and "--download" in failed[0]


def test_the_fetch_command_for_a_voc2007_folder_names_the_folder_above(data_root, tmp_path):
    """The VOC loader takes ROOT/VOC2007 itself as the root; `mlic data voc --root R` makes
    R/VOC2007, so the command to run names ROOT."""
    voc = _copy(data_root / "voc", tmp_path / "voc")
    next(iter((voc / "VOC2007" / "JPEGImages").glob("*.jpg"))).unlink()
    failed = _texts(_check("paper-voc-448", voc / "VOC2007"), "FAIL", "data")
    assert len(failed) == 1 and "1 of " in failed[0]
    assert f"`mlic data voc --root {voc} --download`" in failed[0]


def test_unreadable_images_fail_evaluation_and_warn_training(data_root, tmp_path):
    coco = _copy(data_root / "coco", tmp_path / "coco")
    next(iter((coco / "val2014").glob("*.jpg"))).write_bytes(b"not a jpeg")
    next(iter((coco / "train2014").glob("*.jpg"))).write_bytes(b"\xff\xd8\xff")
    findings = _check("paper-coco-448", coco)
    assert any("val2014: 1 of all 4 images do not decode" in t for t in _texts(findings, "FAIL"))
    assert any("train2014: 1 of all 6 images" in t for t in _texts(findings, "warn", "data"))


def test_a_large_split_is_sampled_unless_verify(data_root, tmp_path, monkeypatch):
    coco = _copy(data_root / "coco", tmp_path / "coco")
    bad = sorted((coco / "val2014").glob("*.jpg"))[1]
    bad.write_bytes(b"broken")
    # Of 4 images, indices 0 and 2 are sampled: not the bad one.
    monkeypatch.setattr(preflight.data, "SAMPLE", 2)
    assert _texts(_check("paper-coco-448", coco), "FAIL", "data") == []
    failed = _texts(_check("paper-coco-448", coco, verify=True), "FAIL", "data")
    assert len(failed) == 1 and bad.name in failed[0]


def test_a_reproduce_data_root_is_taken_to_mean_its_dataset_folder(data_root):
    findings = _check("paper-voc-448", data_root, "model.pretrained=false")
    assert _texts(findings, "FAIL") == []
    assert any("checking" in t and str(data_root / "voc") in t for t in _texts(findings, "info"))


def test_the_paper_plan_checks_both_datasets_and_both_backbones(data_root, capsys, monkeypatch):
    monkeypatch.setattr(preflight.weights, "probe_hub", _unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code = main(["data", "check", "--preset", "paper", "--data-root", str(data_root)])
    out = capsys.readouterr().out
    assert code == 1  # the ImageNet weights cannot be fetched here
    failed = [line for line in out.splitlines() if line.startswith("[FAIL]")]
    assert len(failed) == 2 and all("cannot reach" in line for line in failed)
    assert {"resnet101", "resnest101e"} == {line.split()[2].rstrip(":") for line in failed}
    assert "coco train2014" in out and "voc trainval" in out
    assert len(out.splitlines()) < 40  # one screen


def test_weights_from_a_file_the_cache_or_the_hub(tmp_path, monkeypatch):
    cfg = load_config("paper-coco-448", [f"model.pretrained_file={tmp_path / 'w.pth'}"])
    assert preflight.check_weights(cfg).status == "FAIL"
    (tmp_path / "w.pth").write_bytes(b"x" * 2048)
    assert preflight.check_weights(cfg).status == "ok"
    cfg = load_config("paper-coco-448")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    found = preflight.check_weights(cfg, probe=lambda repo, name: "model.safetensors, 185 MiB")
    assert found.status == "ok" and "timm/resnest101e" in found.text
    failed = preflight.check_weights(cfg, probe=_unreachable)
    assert failed.status == "FAIL" and "model.pretrained_file=PATH" in failed.text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in preflight.check_weights(cfg, probe=_unreachable).text
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda r, f: "/cache/x")
    assert preflight.check_weights(cfg, probe=_unreachable).status == "ok"


def _fit_line(micro: int, size: int = 448, factor: float = 1.0) -> float:
    """The memory model of mlic/measurements.py, written out."""
    per_image = measurements.PER_IMAGE_GIB_448 * (size / 448) ** 2
    return measurements.FIXED_GIB + factor * per_image * micro


def test_memory_need_uses_the_measurement_where_there_is_one():
    need, how = memory_need(load_config("paper-coco-448"))
    assert need == measurements.train_step(448, 64, False).peak_gib and "measured" in how
    need, how = memory_need(load_config("paper-coco-448-24gb"))  # 2 micro-batches of 32
    assert need == measurements.train_step(448, 32, False).peak_gib
    need, how = memory_need(load_config("paper-coco-448-8gb"))  # 4 x 16, checkpointing all
    assert need == pytest.approx(_fit_line(16, factor=measurements.CHECKPOINT_ALL_FACTOR))
    assert "not measured" in how
    need, how = memory_need(load_config("paper-coco-576"))  # batch 48 at 576 px
    assert need == pytest.approx(_fit_line(48, 576)) and "projected" in how
    need, how = memory_need(load_config("paper-coco-448"), gpus=8)  # torchrun: 8 per GPU
    assert need == pytest.approx(_fit_line(8))
    need, how = memory_need(load_config("paper-coco-448", ["model.backbone=resnet101"]))
    assert need is None and "no GPU measurement" in how


def test_the_card_is_compared_with_the_need(data_root, monkeypatch):
    props = SimpleNamespace(name="Test GPU 24GB", total_memory=24 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    big = _texts(_check("paper-coco-448", data_root / "coco"), "FAIL", "gpu")
    assert len(big) == 1 and "32.5 GiB" in big[0] and "paper-coco-448-24gb" in big[0]
    fits = _texts(_check("paper-coco-448-24gb", data_root / "coco"), "ok", "gpu")
    assert len(fits) == 1 and "18.4 GiB" in fits[0] and "fits" in fits[0]
    two = _texts(_check("paper-coco-448", data_root / "coco", gpus=2), "FAIL", "gpu")
    assert any("--gpus 2" in t for t in two)


def test_epoch_time_is_training_plus_two_evaluations_at_the_measured_rates():
    cfg = load_config("paper-coco-448")
    found = epoch_time("x", cfg, Counts(train=82_783, val=40_504))
    step, ev = measurements.train_step(448, 64, True), measurements.eval_step(448)
    seconds = 82_783 / step.images_per_s + 2 * 40_504 / ev.images_per_s
    assert f"about {seconds / 60:.1f} min per epoch" in found.text
    assert f"{seconds * 25 / 3600:.1f} h for 25 epochs" in found.text
    eager = epoch_time("x", load_config("paper-coco-448", ["train.compile=false"]), Counts(64, 64))
    assert f"at {measurements.train_step(448, 64, False).images_per_s:.0f}/s eager" in eager.text
    assert "the full splits" in eager.text  # 64 images, not COCO's
    assert epoch_time("x", load_config("paper-coco-448-8gb"), Counts(10, 10)) is None
