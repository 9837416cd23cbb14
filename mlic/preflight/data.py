"""The data a run reads, checked as training would read it: the annotation files through the
loaders, the image files they list counted against them and against the full splits
(mlic/data/sources.py), and a sample of the images decoded (all of them with verify=True)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mlic.config import Config
from mlic.data.records import SplitIndex
from mlic.data.sources import EXPECTED_IMAGES
from mlic.data.splits import read_split
from mlic.data.stats import decode_errors
from mlic.errors import MlicError
from mlic.preflight.report import Finding

SAMPLE = 64  # images decoded per split without --verify, spread evenly over the split


@dataclass
class Counts:
    """Images per split a run would use (None where the split could not be read)."""

    train: int | None = None
    val: int | None = None


def with_dataset_root(cfg: Config) -> tuple[Config, str]:
    """A data root that holds coco/ or voc/ (the layout `mlic reproduce --data-root` reads) is
    taken to mean that dataset's folder, as reproduce does; says so in the note."""
    root = Path(cfg.data.root) if cfg.data.root else None
    if root is None or cfg.data.dataset not in ("coco", "voc"):
        return cfg, ""
    inner = root / cfg.data.dataset
    has_own = (root / "annotations").is_dir() if cfg.data.dataset == "coco" else (
        (root / "VOC2007").is_dir() or root.name == "VOC2007"
    )  # fmt: skip
    if has_own or not inner.is_dir():
        return cfg, ""
    data = dataclasses.replace(cfg.data, root=str(inner))
    note = (
        f"{root} holds {cfg.data.dataset}/ (the layout of `mlic reproduce --data-root`): "
        f"checking {inner}; `mlic train` takes --data-root {inner}"
    )
    return dataclasses.replace(cfg, data=data), note


def data_key(cfg: Config) -> tuple:
    """What makes two runs read the same images (checked once, counted once)."""
    d = cfg.data
    return (d.dataset, str(d.resolved_root()), d.split("train"), d.split("val"),
            d.max_train_images, d.max_val_images)  # fmt: skip


def check_data(
    cfg: Config, findings: list[Finding], *, verify: bool = False, workers: int | None = None
) -> Counts:
    """Annotation files, image files, a decoded sample; appends findings, returns the counts."""
    d = cfg.data
    root = d.resolved_root()
    counts = Counts()
    if not root.exists():
        findings.append(Finding("FAIL", "data", f"{root}: not found; {_fetch_hint(cfg)}"))
        return counts
    findings.append(Finding("info", "data", f"{d.dataset}: {root}"))
    for which in ("train", "val"):
        split = d.split(which)
        try:
            index = read_split(d.dataset, root, split, train_split=d.split("train"))
        except MlicError as exc:
            findings.append(Finding("FAIL", "data", f"{exc}; {_fetch_hint(cfg)}"))
            continue
        limit = d.max_train_images if which == "train" else d.max_val_images
        used = min(index.num_images, limit) if limit else index.num_images
        setattr(counts, which, used)
        text = f"{d.dataset} {split}: {index.num_images:,} images listed in {_listing(index, root)}"
        if limit and limit < index.num_images:
            text += f" (the run uses the first {limit:,})"
        full = None if d.is_embedded else EXPECTED_IMAGES.get(d.dataset, {}).get(split)
        if full is not None and index.num_images != full:
            text += f"; the full split has {full:,} (a subset, a stand-in, or a damaged file?)"
            findings.append(Finding("warn", "data", text))
        else:
            findings.append(Finding("ok", "data", text))
        present, absent = [], []
        for p in index.files[:used]:
            path = Path(str(p))
            (present if path.is_file() else absent).append(path)
        if absent:
            findings.append(
                Finding(
                    "FAIL",
                    "data",
                    f"{d.dataset} {split}: {len(absent):,} of {used:,} image files are "
                    f"missing (first: {absent[0]}); {_fetch_hint(cfg)}",
                )
            )
        findings.append(_decode_finding(d.dataset, split, which, present, verify, workers))
    return counts


def _decode_finding(
    dataset: str, split: str, which: str, paths: list[Path], verify: bool, workers: int | None
) -> Finding:
    """Decode every image (verify) or SAMPLE evenly spread ones. Training skips an unreadable
    image and counts it (a warning); evaluation stops on one (a failure)."""
    if not paths:
        return Finding("info", "data", f"{dataset} {split}: no image files to decode")
    if verify or len(paths) <= SAMPLE:
        chosen, what = paths, f"all {len(paths):,}"
    else:
        step = len(paths) / SAMPLE
        chosen, what = [paths[int(i * step)] for i in range(SAMPLE)], f"{SAMPLE} sampled"
    bad = [error for error in decode_errors(chosen, workers=workers) if error]
    if not bad:
        return Finding("ok", "data", f"{dataset} {split}: {what} images decode")
    status = "warn" if which == "train" else "FAIL"
    consequence = "training skips them" if which == "train" else "evaluation stops on them"
    more = "" if verify else " (--verify decodes every image)"
    return Finding(
        status,
        "data",
        f"{dataset} {split}: {len(bad)} of {what} images do not decode ({consequence}){more}; "
        f"first: {bad[0]}",
    )


def _fetch_hint(cfg: Config) -> str:
    """The command that brings the missing data."""
    d = cfg.data
    if d.is_embedded:
        return "`mlic data embedded` generates it"
    if d.dataset in ("coco", "voc"):
        root = d.resolved_root()
        if d.dataset == "voc" and root.name == "VOC2007":  # the loader takes the folder itself;
            root = root.parent  # `mlic data voc --root R` makes R/VOC2007
        return f"`mlic data {d.dataset} --root {root} --download` fetches it"
    return "see docs/gpu.md"


def _listing(index: SplitIndex, root: Path) -> str:
    """The file that lists the split's images, relative to the root."""
    source = Path(index.source)
    if index.dataset == "voc":  # the source is Annotations/; the image set file lists the split
        source = source.parent / "ImageSets" / "Main" / f"{index.split}.txt"
    try:
        return str(source.relative_to(root))
    except ValueError:
        return str(source)
