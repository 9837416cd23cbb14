"""Shared fixtures: one tiny embedded dataset per test session (generated in well under 1 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlic.data.embedded import generate_embedded

TINY_EMBEDDED = {"seed": 0, "num_train": 64, "num_val": 32, "image_size": 64, "num_pretext": 96}


@pytest.fixture(scope="session")
def tiny_embedded_root(tmp_path_factory) -> Path:
    """An embedded dataset root (holding coco/ and voc/); read-only: copy before corrupting."""
    root = tmp_path_factory.mktemp("embedded") / "embedded"
    generate_embedded(root, workers=1, **TINY_EMBEDDED)
    return root


def _jpeg(path: Path, size: tuple[int, int] = (40, 30), colour=(200, 100, 50)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=95)


@pytest.fixture
def make_coco(tmp_path):
    """make_coco(data: dict, split="val2014", images=True) -> root: a COCO tree with `data` as
    the annotation file (a dict is written as JSON, a str as is) and a JPEG per image entry."""

    def make(data, split: str = "val2014", images: bool = True) -> Path:
        import json

        root = tmp_path / "coco"
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / split).mkdir(exist_ok=True)
        text = data if isinstance(data, str) else json.dumps(data)
        (root / "annotations" / f"instances_{split}.json").write_text(text)
        if images and isinstance(data, dict):
            for im in data.get("images", []):
                _jpeg(root / split / im["file_name"], (im.get("width", 40), im.get("height", 30)))
        return root

    return make


@pytest.fixture
def make_voc(tmp_path):
    """make_voc({image_id: xml}, split="test", classes=None) -> root holding VOC2007/; an xml is
    its text, or a list of objects (name, difficult, (xmin, ymin, xmax, ymax)) in a 40x30 image."""

    def make(xmls: dict, split: str = "test", classes: list[str] | None = None) -> Path:
        voc = tmp_path / "voc" / "VOC2007"
        (voc / "Annotations").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        for image_id, xml in xmls.items():
            text = xml if isinstance(xml, str) else _voc_xml(*xml)
            (voc / "Annotations" / f"{image_id}.xml").write_text(text)
            _jpeg(voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "JPEGImages").mkdir(exist_ok=True)
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in xmls))
        if classes is not None:
            (voc / "classes.txt").write_text("\n".join(classes) + "\n")
        return voc.parent

    return make


def _voc_xml(*objects: tuple[str, int, tuple[int, int, int, int]], size=(40, 30)) -> str:
    """A VOC annotation: objects as (name, difficult, (xmin, ymin, xmax, ymax))."""
    parts = [
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
        f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, difficult, (x0, y0, x1, y1) in objects
    ]
    return (
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{''.join(parts)}</annotation>"
    )


TINY_RUN = [
    "data.image_size=32",
    "data.num_workers=0",
    "data.max_train_images=48",
    "data.max_val_images=24",
    "model.d_model=32",
    "model.dim_feedforward=64",
    "train.batch_size=8",
    "train.eval_batch_size=16",
    "train.epochs=1",
]


@pytest.fixture(scope="session")
def tiny_run(tiny_embedded_root, tmp_path_factory):
    """A finished one-epoch run on the tiny embedded dataset (with thresholds.json); read-only:
    copy it before changing anything."""
    from mlic.config import load_config
    from mlic.fit import fit

    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = load_config("embedded", [*TINY_RUN, f"data.embedded_root={tiny_embedded_root}"])
    fit(cfg, run_dir, progress=False)
    return run_dir
