"""build_dataset from a configuration, `mlic data stats`, and the torch-free import path."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import torch

from mlic.config import DataConfig
from mlic.data import build, build_dataset, dataset_stats
from mlic.data.embedded import CLASSES, read_marker


def test_build_dataset_from_a_root_with_limits_and_augmentation(tiny_embedded_root):
    cfg = DataConfig(
        dataset="voc",
        root=str(tiny_embedded_root / "voc"),
        image_size=32,
        max_train_images=10,
    )
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 10 and len(val) == 32
    assert train.image_files[0].name == "embedded_train2014_000000000001.jpg"
    assert train.skip_unreadable and not val.skip_unreadable
    image, target, ignore = val[0]
    assert image.shape == (3, 32, 32) and target.shape == ignore.shape == (len(CLASSES),)
    # Augmentation: on by default for train only; augment=False gives the eval pipeline.
    plain = build_dataset(cfg, "train", augment=False)
    torch.manual_seed(0)
    augmented = [not torch.equal(train[i][0], plain[i][0]) for i in range(5)]
    assert sum(augmented) >= 4 and torch.equal(plain[0][0], plain[0][0])


def test_the_embedded_dataset_is_generated_on_first_use(tmp_path, monkeypatch):
    calls = []
    real = build.ensure_embedded

    def small(root, **kwargs):  # the default size takes ~10 s: use a small one here
        calls.append(root)
        return real(root, num_train=6, num_val=4, image_size=32, num_pretext=4, **kwargs)

    monkeypatch.setattr(build, "ensure_embedded", small)
    cfg = DataConfig(dataset="coco", embedded_root=str(tmp_path / "emb"), image_size=32)
    assert cfg.is_embedded
    val = build_dataset(cfg, "val")
    assert calls == [tmp_path / "emb"] and len(val) == 4
    assert read_marker(tmp_path / "emb")["num_val"] == 4
    assert val.class_names == list(CLASSES)


def test_stats_of_both_trees_report_the_same_images_and_classes(tiny_embedded_root):
    coco = dataset_stats("coco", tiny_embedded_root / "coco", "val2014")
    voc = dataset_stats("voc", tiny_embedded_root / "voc", "test", verify=True)
    assert coco["num_images"] == voc["num_images"] == 32
    assert coco["class_names"] == voc["class_names"] == list(CLASSES)
    for name in CLASSES:
        both = voc["positives_per_class"][name] + voc["difficult_only_per_class"][name]
        assert both == coco["positives_per_class"][name]
    assert voc["num_objects"] == coco["num_objects"] >= voc["difficult_objects"] > 0
    assert voc["verified"] and voc["unreadable"] == []
    assert json.loads(json.dumps(voc)) == voc  # JSON-able as it is
    assert coco["images_without_labels"] == sum(
        1
        for row in build.read_split("coco", tiny_embedded_root / "coco", "val2014").targets
        if not row.any()
    )


def test_data_commands_do_not_import_torch():
    code = (
        "import sys, mlic.data, mlic.data.stats, mlic.data.embedded;"
        "from mlic.data import dataset_stats, generate_embedded;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_resolves():
    import mlic.data

    assert sorted(mlic.data.__all__) == sorted(mlic.data._EXPORTS)
    for name in mlic.data.__all__:
        assert getattr(mlic.data, name) is not None


def test_cached_images_are_decoded_once_and_equal_the_uncached_ones(
    tiny_embedded_root, monkeypatch
):
    from mlic.data import base

    cfg = DataConfig(
        dataset="coco", root=str(tiny_embedded_root / "coco"), image_size=32, cache_images=True
    )
    reads = []
    real_open = base.open_rgb
    monkeypatch.setattr(base, "open_rgb", lambda path: reads.append(path) or real_open(path))
    val = build_dataset(cfg, "val", uint8=True)
    plain = build_dataset(replace(cfg, cache_images=False), "val", uint8=True)
    reads.clear()
    first = [val[i][0] for i in range(4)]
    again = [val[i][0] for i in range(4)]
    assert len(reads) == 4  # the second pass came from memory
    for a, b, c in zip(first, again, [plain[i][0] for i in range(4)], strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    # Training with RandAugment draws new pixels every time: such a pipeline is never cached.
    augmented = build_dataset(cfg, "train")
    assert augmented._cache is None
    no_aug = build_dataset(replace(cfg, randaugment=False), "train")
    assert no_aug._cache == {}
