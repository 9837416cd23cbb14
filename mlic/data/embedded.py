"""The embedded dataset: a deterministic generator of a small multi-label image dataset that
has what makes the paper's problem hard, written as real COCO 2014 and VOC 2007 trees.

Design (the issue's "embedded dataset"; the numbers are constants of `mlic.data.synth`, which
renders the images; this module writes the trees):
- 24 classes = 6 colours x 4 shapes ("red-circle", ..., "magenta-cross"): hues 60 degrees
  apart and shapes that stay distinct at 64 px. Texture (solid, striped, shaded, outlined) and
  colour jitter vary WITHIN a class.
- 6 scenes (co-occurrence groups) of 4 classes each, a Latin square over colour x shape, so a
  scene is neither one colour nor one shape. An image draws one scene; each object comes from
  that scene with probability 0.85, else from any class: labels co-occur as in real scenes.
  Scenes and classes within a scene have unequal frequencies (as COCO's classes do).
- 0-6 objects per image (mean 2.9; 2.2 distinct labels; 2% of images have none), drawn areas
  log-uniform from 0.15% to 12-30% of the image: after occlusion about three quarters of the
  objects are small (visible area <= 5% of the image). A tiny object's shape is hard to see
  at 64 px, its colour is not, and its scene tells which shape that colour has there: the
  case where label correlations help.
- Clutter: textured, muted backgrounds (gradients, stripes, checks, blobs), pixel noise and
  distractors that are NOT classes (bars, arcs, zigzags, rings and dots in class colours;
  class shapes in grey/brown/white/black). Objects and distractors overlap: partial occlusion
  and truncation at the border, but every annotated object keeps >= 35% of its area visible.
- COCO tree: non-contiguous category ids (multiples of 7 are skipped, as COCO skips some),
  supercategory = the shape, bbox [x,y,w,h] and area of the VISIBLE part (as COCO's are).
- VOC tree: the same JPEG files; `difficult` = less than half visible, or a tiny object
  (< 1% of the image) with probability 0.35; classes in `VOC2007/classes.txt`.
- Pretext tree (`pretext/`, a CSV dataset): the stand-in for ImageNet. Each image shows ONE
  object of any class (no scene), drawn from 0.5 % to 30 % of the image, on the same clutter;
  its class is the image's one label. The embedded plan pretrains each backbone on it once
  (`mlic.pretext`), as the paper starts from ImageNet weights. 12,000 training images (more
  than the dataset's: the pretraining is shared by every run); as many validation images.

Determinism: image i of a split is drawn from its own NumPy generator seeded by
(seed, split, i), so the bytes do not depend on the number of worker processes; JPEGs are
written with fixed quality and subsampling, JSON with a fixed key order. Generation is atomic:
into a temporary folder next to `root`, then renamed, with a marker file written last that
records the generator's parameters and version.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET  # writing only; reading goes through defusedxml

from mlic.data.synth import CLASSES, COLOURS, SCENES, SHAPES, render_image
from mlic.errors import DataError
from mlic.safeload import load_json

__all__ = [  # the class design is re-exported from synth
    "CLASSES",
    "COLOURS",
    "SCENES",
    "SHAPES",
    "ensure_embedded",
    "generate_embedded",
    "generator_params",
    "read_marker",
]

# Bump whenever the bytes or the default sizes change: the marker then forces regeneration.
# 2: 5,000 training images by default (was 2,500); image i is the same as before.
# 3: objects drawn from 0.2 % of the image (was 0.5 %), so that COCO's scaled "small" bucket
#    holds about 6 % of the positives (AP by object size); 6,000 training images.
# 4: a pretext tree (`pretext/`, one object per image) for pretraining the backbones; 3,500
#    training images (the first 3,500 of version 3: image i is unchanged).
# 5: objects drawn from 0.15 % of the image (was 0.2 %): the small bucket holds 11 % of the
#    positives (was 6.4 %). The pretext tree is unchanged.
GENERATOR_VERSION = 5
MARKER = "mlic-embedded.json"
DEFAULT_NUM_TRAIN = 3500
DEFAULT_NUM_VAL = 1000
DEFAULT_NUM_PRETEXT = 12000  # pretext training images (its validation split: num_val)
DEFAULT_IMAGE_SIZE = 96  # px; the embedded preset trains at 56 and 72 px
SPLITS = ("train2014", "val2014")
PRETEXT = "pretext"  # the pretext tree's folder under the root: a CSV dataset (dataset: csv)
PRETEXT_SPLITS = {"train": 2, "val": 3}  # split -> split code of the generator (2, 3: unused above)
VOC_SETS = {"train2014": "trainval", "val2014": "test"}
# COCO's category ids are 1..90 with gaps; ours skip the multiples of 7.
CATEGORY_IDS = tuple(i for i in range(1, 64) if i % 7)[: len(CLASSES)]
SMALL = 0.05  # of the image area

# --------------------------------------------------------------------------- public API


def generator_params(
    seed: int, num_train: int, num_val: int, image_size: int, num_pretext: int
) -> dict[str, Any]:
    """What the marker file records; a different record means the data must be regenerated."""
    return {
        "generator": "mlic.data.embedded",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "num_pretext": num_pretext,
    }


def read_marker(root: Path) -> dict[str, Any] | None:
    """The generator's parameters, or None where there is no (readable, regular) marker file."""
    if not (Path(root) / MARKER).exists():
        return None
    try:
        marker = load_json(Path(root) / MARKER, max_bytes=1 << 16)
    except DataError:
        return None
    return marker if isinstance(marker, dict) else None


def ensure_embedded(
    root: str | Path,
    *,
    seed: int = 0,
    num_train: int | None = None,
    num_val: int | None = None,
    image_size: int | None = None,
    num_pretext: int | None = None,
) -> Path:
    """Generate the embedded dataset under `root` unless a complete one (its marker file) from
    this generator version and seed is already there. Sizes left as None accept whatever a
    complete dataset there has (e.g. one made by `mlic data embedded` with other sizes) and
    default to DEFAULT_NUM_TRAIN / DEFAULT_NUM_VAL / DEFAULT_IMAGE_SIZE / DEFAULT_NUM_PRETEXT when
    generating.
    Returns `root`."""
    root = Path(root)
    wanted = {
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "num_pretext": num_pretext,
    }

    def complete() -> bool:
        marker = read_marker(root) or {}
        sizes = (marker.get(k) if v is None else v for k, v in wanted.items())
        return marker == generator_params(seed, *sizes)

    # Before the marker and the lock: a size of 0 asked for is refused, not read as "the default".
    _check_params(root, seed, {key: value for key, value in wanted.items() if value is not None})
    if complete():
        return root
    defaults = {
        "num_train": DEFAULT_NUM_TRAIN,
        "num_val": DEFAULT_NUM_VAL,
        "image_size": DEFAULT_IMAGE_SIZE,
        "num_pretext": DEFAULT_NUM_PRETEXT,
    }
    with _lock(root):  # several processes (DDP ranks) starting at once: one generates
        if not complete():
            generate_embedded(
                root,
                seed=seed,
                **{key: defaults[key] if value is None else value for key, value in wanted.items()},
            )
    return root


def _check_params(root: Path, seed: int, sizes: dict[str, int]) -> None:
    """One line naming the dataset folder and the value, before anything is written."""
    for key in ("num_train", "num_val", "num_pretext"):
        if key in sizes and sizes[key] < 1:
            raise DataError(
                f"{root}: {key}={sizes[key]}: the embedded dataset needs at least one train, "
                "val and pretext image"
            )
    if not 0 <= seed < 2**32:
        raise DataError(f"{root}: seed={seed} is not in [0, 2**32)")
    if sizes.get("image_size", 32) < 32:
        raise DataError(f"{root}: image_size={sizes['image_size']} is below 32 px")


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """An exclusive lock file next to `root` (POSIX flock; no lock where fcntl is missing)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def generate_embedded(
    root: str | Path,
    *,
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    num_pretext: int = DEFAULT_NUM_PRETEXT,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write `<root>/coco/...`, `<root>/voc/VOC2007/...` and the pretext tree `<root>/pretext/`
    (replacing an earlier generated dataset there); same arguments -> byte-identical files.
    Returns a summary."""
    root = Path(root)
    _check_params(
        root,
        seed,
        {
            "num_train": num_train,
            "num_val": num_val,
            "image_size": image_size,
            "num_pretext": num_pretext,
        },
    )
    _refuse_foreign_folder(root)
    start = time.perf_counter()
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        counts = _write_trees(tmp, seed, num_train, num_val, image_size, workers)
        counts["pretext_images"] = _write_pretext(
            tmp / PRETEXT, seed, num_pretext, num_val, image_size, workers
        )
        params = generator_params(seed, num_train, num_val, image_size, num_pretext)
        _write_text(tmp / MARKER, json.dumps(params, indent=2) + "\n")  # last: "complete"
        _swap_into_place(tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "root": str(root),
        **generator_params(seed, num_train, num_val, image_size, num_pretext),
        "num_classes": len(CLASSES),
        "classes": list(CLASSES),
        "scenes": {
            f"scene-{s + 1}": [CLASSES[c] for c in members] for s, members in enumerate(SCENES)
        },
        **counts,
        "seconds": round(time.perf_counter() - start, 2),
    }


# --------------------------------------------------------------------------- writing the trees


def _write_trees(
    out: Path, seed: int, num_train: int, num_val: int, size: int, workers: int | None
) -> dict[str, Any]:
    coco, voc = out / "coco", out / "voc" / "VOC2007"
    for folder in (coco / "annotations", voc / "Annotations", voc / "JPEGImages"):
        folder.mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    _write_text(voc / "classes.txt", "".join(f"{name}\n" for name in CLASSES))
    counts: dict[str, Any] = {"images": {}, "objects": {}, "small_objects": {}, "difficult": {}}
    next_image_id, next_ann_id = 1, 1
    for split_code, (split, n) in enumerate(zip(SPLITS, (num_train, num_val), strict=True)):
        (coco / split).mkdir()
        rendered = _render_all(seed, split_code, n, size, workers)
        images, annotations, stems = [], [], []
        n_objects = n_small = n_difficult = 0
        for i, (jpeg, objects) in enumerate(rendered):
            image_id = next_image_id + i
            stem = f"embedded_{split}_{image_id:012d}"
            stems.append(stem)
            (coco / split / f"{stem}.jpg").write_bytes(jpeg)
            (voc / "JPEGImages" / f"{stem}.jpg").write_bytes(jpeg)
            images.append(
                {"id": image_id, "file_name": f"{stem}.jpg", "width": size, "height": size}
            )
            for obj in objects:
                annotations.append(
                    {
                        "id": next_ann_id,
                        "image_id": image_id,
                        "category_id": CATEGORY_IDS[obj["class_index"]],
                        "bbox": obj["bbox"],
                        "area": obj["area"],
                        "iscrowd": 0,
                    }
                )
                next_ann_id += 1
                n_small += obj["area"] <= SMALL * size * size
                n_difficult += obj["difficult"]
            n_objects += len(objects)
            _write_text(voc / "Annotations" / f"{stem}.xml", _voc_xml(stem, size, objects))
        next_image_id += n
        _write_text(
            coco / "annotations" / f"instances_{split}.json",
            json.dumps(_coco_json(seed, images, annotations), separators=(",", ":")) + "\n",
        )
        _write_text(
            voc / "ImageSets" / "Main" / f"{VOC_SETS[split]}.txt", "".join(f"{s}\n" for s in stems)
        )
        counts["images"][split] = n
        counts["objects"][split] = n_objects
        counts["small_objects"][split] = n_small
        counts["difficult"][split] = n_difficult
    return counts


def _write_pretext(
    out: Path, seed: int, num_train: int, num_val: int, size: int, workers: int | None
) -> dict[str, int]:
    """The pretext tree, a CSV dataset (`mlic.data.csv_dataset`): one object per image, its
    class the image's one label. The backbones are pretrained on it (`mlic.pretext`)."""
    (out / "images").mkdir(parents=True)
    _write_text(out / "classes.txt", "".join(f"{name}\n" for name in CLASSES))
    counts = {}
    for split, n in zip(PRETEXT_SPLITS, (num_train, num_val), strict=True):
        rows = ["image,labels"]
        rendered = _render_all(seed, PRETEXT_SPLITS[split], n, size, workers, pretext=True)
        for i, (jpeg, objects) in enumerate(rendered):
            name = f"images/pretext_{split}_{i:06d}.jpg"
            (out / name).write_bytes(jpeg)
            rows.append(f"{name},{'|'.join(CLASSES[o['class_index']] for o in objects)}")
        _write_text(out / f"{split}.csv", "\n".join(rows) + "\n")
        counts[split] = n
    return counts


def _coco_json(seed: int, images: list, annotations: list) -> dict[str, Any]:
    return {
        "info": {
            "description": "mlic embedded dataset (generated by mlic.data.embedded)",
            "version": str(GENERATOR_VERSION),
            "year": 2024,
            "contributor": "mlic",
            "date_created": "",
            "seed": seed,
            "scenes": [[CLASSES[c] for c in members] for members in SCENES],
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": name, "supercategory": name.split("-")[1]}
            for cid, name in zip(CATEGORY_IDS, CLASSES, strict=True)
        ],
    }


def _voc_xml(stem: str, size: int, objects: list[dict[str, Any]]) -> str:
    def sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
        node = ET.SubElement(parent, tag)
        if text is not None:
            node.text = str(text)
        return node

    ann = ET.Element("annotation")
    sub(ann, "folder", "VOC2007")
    sub(ann, "filename", f"{stem}.jpg")
    sub(sub(ann, "source"), "database", "mlic embedded")
    dims = sub(ann, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        sub(dims, tag, value)
    sub(ann, "segmented", 0)
    for obj in objects:
        node = sub(ann, "object")
        sub(node, "name", CLASSES[obj["class_index"]])
        sub(node, "pose", "Unspecified")
        sub(node, "truncated", int(obj["truncated"]))
        sub(node, "difficult", int(obj["difficult"]))
        box = sub(node, "bndbox")
        x, y, w, h = obj["bbox"]
        # VOC boxes: 1-based inclusive pixel indices.
        corners = (math.floor(x) + 1, math.floor(y) + 1, math.ceil(x + w), math.ceil(y + h))
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), corners, strict=True):
            sub(box, tag, min(max(value, 1), size))
    ET.indent(ann)
    return ET.tostring(ann, encoding="unicode") + "\n"


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def _refuse_foreign_folder(root: Path) -> None:
    """Never replace a folder we did not generate (it may be a user's real dataset)."""
    if root.exists() and read_marker(root) is None and any(root.iterdir()):
        raise DataError(
            f"{root}: exists and is not a generated embedded dataset (no {MARKER}); "
            "choose another root or remove the folder"
        )


def _swap_into_place(tmp: Path, root: Path, params: dict[str, Any]) -> None:
    if read_marker(root) == params:
        return  # another process has just written the same files: keep them (readers may be on)
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    if root.exists():
        _refuse_foreign_folder(root)
        root.rename(old)
    try:
        tmp.rename(root)
    except OSError:
        # Another process finished first: keep its copy if it is what we would have written.
        if read_marker(root) != params:
            raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_temporaries(root: Path) -> None:
    """Leftovers of interrupted generations (their process is gone) on this machine."""
    for kind in ("tmp", "old"):
        for leftover in root.parent.glob(f".{root.name}.{kind}-*"):
            try:
                os.kill(int(leftover.name.rsplit("-", 1)[1]), 0)
            except ProcessLookupError:
                shutil.rmtree(leftover, ignore_errors=True)
            except (ValueError, OSError):
                continue  # not ours, or a live process of another user


# --------------------------------------------------------------------------- rendering


def _render_all(
    seed: int, split_code: int, n: int, size: int, workers: int | None, pretext: bool = False
) -> list[tuple[bytes, list[dict[str, Any]]]]:
    """Render images 0..n-1 of a split, in order; in `workers` processes when that helps."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n >= 400 else 1
    tasks = [(seed, split_code, i, size, pretext) for i in range(n)]
    if workers <= 1:
        return [_render_task(task) for task in tasks]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_render_task, tasks, chunksize=max(1, n // (8 * workers))))


def _render_task(task: tuple[int, int, int, int, bool]) -> tuple[bytes, list[dict[str, Any]]]:
    seed, split_code, index, size, pretext = task
    return render_image(seed, split_code, index, size, pretext=pretext)
