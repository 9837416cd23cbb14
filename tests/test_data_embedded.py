"""The embedded dataset: deterministic, both layouts agree, and it has the properties that make
the paper's problem hard (many classes, small objects, co-occurrence, occlusion)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from defusedxml import ElementTree as SafeET
from PIL import Image

from mlic.data import embedded
from mlic.data.embedded import (
    CLASSES,
    MARKER,
    SCENES,
    ensure_embedded,
    generate_embedded,
    read_marker,
)
from mlic.errors import DataError


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def coco_json(root: Path, split: str) -> dict:
    return json.loads((root / "coco" / "annotations" / f"instances_{split}.json").read_text())


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(tmp_path):
    sizes = {"num_train": 10, "num_val": 6, "image_size": 48, "num_pretext": 5}
    generate_embedded(tmp_path / "a", seed=5, workers=1, **sizes)
    generate_embedded(tmp_path / "b", seed=5, workers=2, **sizes)
    generate_embedded(tmp_path / "c", seed=6, workers=1, **sizes)
    a, b, c = (file_hashes(tmp_path / x) for x in "abc")
    assert len(a) > 2 * 16  # every image twice, plus annotations
    assert a == b
    assert a.keys() == c.keys()
    jpegs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in jpegs), "another seed must give other images"


def test_layout_ids_boxes_and_both_trees_agree(tiny_embedded_root):
    root = tiny_embedded_root
    voc = root / "voc" / "VOC2007"
    assert (voc / "classes.txt").read_text().split() == list(CLASSES)
    for split, image_set in (("train2014", "trainval"), ("val2014", "test")):
        data = coco_json(root, split)
        cats = data["categories"]
        ids = [c["id"] for c in cats]
        assert ids == sorted(ids) and len(ids) == len(CLASSES) >= 20
        assert ids[-1] - ids[0] + 1 > len(ids), "COCO-like ids have gaps"
        assert [c["name"] for c in cats] == list(CLASSES)
        assert all(c["supercategory"] for c in cats)
        stems = (voc / "ImageSets" / "Main" / f"{image_set}.txt").read_text().split()
        assert stems == [Path(im["file_name"]).stem for im in data["images"]]
        by_image: dict[int, list] = {im["id"]: [] for im in data["images"]}
        for ann in data["annotations"]:
            by_image[ann["image_id"]].append(ann)
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= 64 + 1e-6 and y + h <= 64 + 1e-6
            assert 0 < ann["area"] <= w * h + 1e-6  # the visible area fits in its box
        name_of = {c["id"]: c["name"] for c in cats}
        for im in data["images"]:
            jpg = (root / "coco" / split / im["file_name"]).read_bytes()
            assert jpg == (voc / "JPEGImages" / im["file_name"]).read_bytes()
            pil = Image.open(io.BytesIO(jpg))
            assert pil.format == "JPEG" and pil.size == (im["width"], im["height"]) == (64, 64)
            xml = SafeET.parse(voc / "Annotations" / f"{Path(im['file_name']).stem}.xml").getroot()
            objects = xml.findall("object")
            coco_names = sorted(name_of[a["category_id"]] for a in by_image[im["id"]])
            assert sorted(o.findtext("name") for o in objects) == coco_names
            assert xml.findtext("size/width") == "64"
    assert read_marker(root)["num_train"] == 64


def test_the_dataset_is_hard_in_the_ways_the_paper_cares_about(tmp_path):
    generate_embedded(
        tmp_path / "d", seed=1, num_train=300, num_val=4, image_size=64, num_pretext=2
    )
    data = coco_json(tmp_path / "d", "train2014")
    n, k = len(data["images"]), len(CLASSES)
    index = {cid: j for j, cid in enumerate(c["id"] for c in data["categories"])}
    labels = np.zeros((n, k), dtype=bool)
    objects_per_image = np.zeros(n, dtype=int)
    row = {im["id"]: i for i, im in enumerate(data["images"])}
    fractions = []
    for ann in data["annotations"]:
        i = row[ann["image_id"]]
        labels[i, index[ann["category_id"]]] = True
        objects_per_image[i] += 1
        fractions.append(ann["area"] / 64**2)
    fractions = np.array(fractions)

    assert labels.any(axis=0).all(), "every class appears"
    assert objects_per_image.max() <= 6 and (objects_per_image >= 5).any()
    assert 1.5 < objects_per_image.mean() < 4.5  # COCO: 2.9 labels per image
    assert 0 < (objects_per_image == 0).sum() < 0.1 * n  # a few images without labels
    assert (fractions <= 0.05).mean() > 0.3, "many small objects (<= 5% of the image)"
    assert (fractions >= 0.10).sum() > 20, "and large ones"

    # Co-occurrence: classes of the same scene appear together far more often than chance.
    p = labels.mean(axis=0)
    joint = (labels[:, :, None] & labels[:, None, :]).mean(axis=0)
    lift = joint / np.maximum(p[:, None] * p[None, :], 1e-9)
    same_scene = np.zeros((k, k), dtype=bool)
    for members in SCENES:
        for a, b in itertools.permutations(members, 2):
            same_scene[a, b] = True
    other = ~same_scene & ~np.eye(k, dtype=bool)
    assert lift[same_scene].mean() > 2 * lift[other].mean()

    # Occlusion and difficulty flags: some objects, not most.
    voc = tmp_path / "d" / "voc" / "VOC2007" / "Annotations"
    flags = [
        (o.findtext("difficult"), o.findtext("truncated"))
        for xml in voc.glob("embedded_train2014_*.xml")
        for o in SafeET.parse(xml).getroot().findall("object")
    ]
    difficult = np.mean([d == "1" for d, _ in flags])
    truncated = np.mean([t == "1" for _, t in flags])
    assert 0.02 < difficult < 0.3 and 0.02 < truncated < 0.5


def test_classes_have_distinct_colours_in_the_pixels(tmp_path):
    """Learnability: the mean colour inside solid-ish objects' boxes sorts by the class hue."""
    generate_embedded(tmp_path / "e", seed=2, num_train=80, num_val=4, image_size=96, num_pretext=2)
    data = coco_json(tmp_path / "e", "train2014")
    name = {c["id"]: c["name"] for c in data["categories"]}
    files = {im["id"]: im["file_name"] for im in data["images"]}
    hits = misses = 0
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        if ann["area"] < 0.6 * w * h or w * h < 150:
            continue  # occluded or tiny: the box holds other things
        with Image.open(tmp_path / "e" / "coco" / "train2014" / files[ann["image_id"]]) as im:
            patch = im.convert("HSV").crop((x + w / 3, y + h / 3, x + 2 * w / 3, y + 2 * h / 3))
        hue = np.asarray(patch, dtype=float)[..., 0].ravel() * 360 / 255
        centre = np.degrees(np.angle(np.exp(1j * np.radians(hue)).mean())) % 360
        target = embedded.COLOURS[name[ann["category_id"]].split("-")[0]]
        distance = min(abs(centre - target), 360 - abs(centre - target))
        hits += distance < 25
        misses += distance >= 25
    assert hits > 30 and hits > 4 * misses, (hits, misses)


def test_ensure_embedded_reuses_a_complete_dataset_and_regenerates_otherwise(tmp_path, monkeypatch):
    root = tmp_path / "emb"
    sizes = {"num_train": 4, "num_val": 3, "image_size": 32, "num_pretext": 2}
    generate_embedded(root, seed=0, **sizes)
    calls = []
    real = embedded.generate_embedded
    monkeypatch.setattr(
        embedded, "generate_embedded", lambda *a, **kw: calls.append(kw) or real(*a, **kw)
    )
    assert ensure_embedded(root) == root  # sizes not asked for: any complete one is fine
    assert ensure_embedded(root, **sizes) == root
    assert calls == []
    ensure_embedded(root, seed=1, **sizes)  # another seed: regenerated in place
    assert len(calls) == 1 and read_marker(root)["seed"] == 1
    (root / MARKER).write_text('{"version": 0}')  # an older generator
    ensure_embedded(root, seed=1, **sizes)
    assert len(calls) == 2 and read_marker(root)["version"] == embedded.GENERATOR_VERSION


def test_an_interrupted_generation_never_looks_complete(tmp_path, monkeypatch):
    root = tmp_path / "emb"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    # Dies after the training images are written, before their annotation file.
    monkeypatch.setattr(embedded, "_coco_json", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_embedded(root, num_train=3, num_val=2, image_size=32, num_pretext=2)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


def test_leftovers_of_dead_processes_are_removed_and_user_folders_are_not_replaced(tmp_path):
    dead = tmp_path / ".emb.tmp-999999999"  # no such pid
    (dead / "coco").mkdir(parents=True)
    generate_embedded(tmp_path / "emb", num_train=2, num_val=2, image_size=32, num_pretext=2)
    assert not dead.exists()

    mine = tmp_path / "my-data"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="my-data.*not a generated embedded dataset"):
        ensure_embedded(mine)
    assert (mine / "precious.txt").read_text() == "keep me"
    assert sorted(n for n in os.listdir(tmp_path) if not n.endswith(".lock")) == ["emb", "my-data"]


def test_processes_starting_together_generate_once_and_leave_one_complete_copy(tmp_path):
    """DDP ranks all call ensure_embedded on first use: the lock makes one of them generate."""
    import subprocess
    import sys

    root = tmp_path / "emb"
    code = (
        "import sys; from mlic.data import embedded;"
        "real = embedded.generate_embedded;"
        "embedded.generate_embedded = lambda *a, **k: print('generated') or real(*a, **k);"
        f"embedded.ensure_embedded({str(root)!r}, num_train=40, num_val=10, image_size=48, num_pretext=4)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(out.count("generated") for out in outputs) == 1
    assert read_marker(root)["num_train"] == 40
    assert len(list((root / "coco" / "train2014").iterdir())) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == [".emb.lock", "emb"]


def test_the_pretext_tree_is_a_csv_dataset_of_one_object_per_image(tiny_embedded_root):
    # The backbones' pretraining data (mlic.pretext): readable as `dataset: csv`, one label per
    # image (an object that found no place would leave none), and not the dataset's images.
    from conftest import TINY_EMBEDDED as TINY

    from mlic.data.csv_dataset import read_csv_split

    root = tiny_embedded_root / embedded.PRETEXT
    train = read_csv_split(root, "train")
    val = read_csv_split(root, "val")
    assert train.class_names == list(CLASSES)
    n_train, n_val = TINY["num_pretext"], TINY["num_val"]
    assert (len(train.targets), len(val.targets)) == (n_train, n_val)
    per_image = np.concatenate([train.targets, val.targets]).sum(axis=1)
    assert per_image.max() == 1 and per_image.mean() > 0.95
    # Any class, no scenes: 96 uniform draws leave out 3 or more of 24 classes with p < 1 %.
    assert len(set(train.targets.argmax(axis=1)[per_image[:n_train] == 1])) >= len(CLASSES) - 2
    pretext_bytes = {p.read_bytes() for p in (root / "images").glob("*.jpg")}
    coco_bytes = {p.read_bytes() for p in (tiny_embedded_root / "coco").rglob("*.jpg")}
    assert len(pretext_bytes) == n_train + n_val and not pretext_bytes & coco_bytes


def test_mlic_data_embedded_passes_the_training_split_size_on(tmp_path, monkeypatch, capsys):
    """`--num-train N` (docs/deviations.md's data-size measurements) reaches the generator; a
    size below one is refused in one line before anything is written."""
    import mlic.data
    from mlic.cli import main

    calls = []
    monkeypatch.setattr(
        mlic.data, "ensure_embedded", lambda root, **kw: calls.append(("ensure", kw))
    )
    monkeypatch.setattr(
        mlic.data, "generate_embedded", lambda root, **kw: calls.append(("generate", kw)) or {}
    )
    root = str(tmp_path / "emb")
    assert main(["data", "embedded", "--root", root]) == 0
    assert main(["data", "embedded", "--root", root, "--num-train", "7000"]) == 0
    assert main(["data", "embedded", "--root", root, "--num-train", "7000", "--force"]) == 0
    assert calls == [
        ("ensure", {"seed": 0}),
        ("ensure", {"seed": 0, "num_train": 7000}),
        ("generate", {"seed": 0, "num_train": 7000}),
    ]
    monkeypatch.undo()  # the real generator refuses the size, with and without --force
    capsys.readouterr()
    for force in ([], ["--force"]):
        assert main(["data", "embedded", "--root", root, "--num-train", "0", *force]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and root in err and "num_train=0" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, not even a lock
