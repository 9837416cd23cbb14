"""Where COCO 2014 and VOC 2007 come from, as data: archive URLs, sizes, MD5 checksums, and
what each archive holds once unpacked (`mlic data coco|voc --download`, mlic/data/download.py).

Sizes are the servers' Content-Length in bytes; MD5s are the values published with the
archives' reference downloaders. Both were looked up in public code, not measured here (this
project's machine has no network):
- COCO 2014: the MD5s of train2014.zip, val2014.zip and annotations_trainval2014.zip as
  Salesforce LAVIS, PaddleNLP and MLPerf's download scripts list them (agreeing with each other);
  sizes as wget/Keras download logs and HEAD requests printed them.
- VOC 2007: the MD5s of torchvision's `torchvision/datasets/voc.py` (DATASET_YEAR_DICT, "2007"
  and "2007-test"); sizes as download logs printed them.

`md5=None` would mean "no published checksum": the size is then the only check, which
`mlic data` says when it happens. Every archive below has one.

Image counts per split (for `mlic data check`): COCO 2014 train 82,783 / val 40,504 images
(cocodataset.org, and what instances_{train,val}2014.json list); VOC 2007 trainval 5,011 /
test 4,952 (the VOC 2007 development kit's ImageSets/Main).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from mlic.errors import MlicError

# The official hosts; the VOC archives also live on the long-standing pjreddie.com mirror,
# tried when the Oxford host does not answer.
COCO_HOST = "http://images.cocodataset.org"
VOC_HOST = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007"
VOC_MIRROR = "https://pjreddie.com/media/files"
MIRROR_SCHEMES = ("http", "https", "ftp", "file")  # what urllib can fetch


@dataclass(frozen=True)
class Archive:
    """One downloadable archive and what unpacking it must produce."""

    name: str  # the file name, also the name under a --mirror URL
    urls: tuple[str, ...]  # tried in order
    size: int | None  # bytes; None: unknown (then not checked)
    md5: str | None  # hex; None: no published checksum (then only the size is checked)
    kind: str  # "zip" or "tar"
    # Paths (relative to the dataset root) that must exist after unpacking.
    provides: tuple[str, ...]
    # A leading folder of every member to drop when unpacking ("VOCdevkit/": the VOC tars hold
    # VOCdevkit/VOC2007/..., the presets read <root>/VOC2007/...).
    strip: str = ""


ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "coco": (
        Archive(
            "annotations_trainval2014.zip",
            (f"{COCO_HOST}/annotations/annotations_trainval2014.zip",),
            252_872_794,
            "0a379cfc70b0e71301e0f377548639bd",
            "zip",
            ("annotations/instances_train2014.json", "annotations/instances_val2014.json"),
        ),
        Archive(
            "val2014.zip",
            (f"{COCO_HOST}/zips/val2014.zip",),
            6_645_013_297,
            "a3d79f5ed8d289b7a7554ce06a5782b3",
            "zip",
            ("val2014",),
        ),
        Archive(
            "train2014.zip",
            (f"{COCO_HOST}/zips/train2014.zip",),
            13_510_573_713,
            "0da8c0bd3d6becc4dcb32757491aca88",
            "zip",
            ("train2014",),
        ),
    ),
    "voc": (
        Archive(
            "VOCtrainval_06-Nov-2007.tar",
            (
                f"{VOC_HOST}/VOCtrainval_06-Nov-2007.tar",
                f"{VOC_MIRROR}/VOCtrainval_06-Nov-2007.tar",
            ),
            460_032_000,
            "c52e279531787c972589f7e41ab4ae64",
            "tar",
            ("VOC2007/Annotations", "VOC2007/JPEGImages", "VOC2007/ImageSets/Main/trainval.txt"),
            strip="VOCdevkit/",
        ),
        Archive(
            "VOCtest_06-Nov-2007.tar",
            (
                f"{VOC_HOST}/VOCtest_06-Nov-2007.tar",
                f"{VOC_MIRROR}/VOCtest_06-Nov-2007.tar",
            ),
            451_020_800,
            "b6e924de25625d8de591ea690078ad9f",
            "tar",
            ("VOC2007/Annotations", "VOC2007/JPEGImages", "VOC2007/ImageSets/Main/test.txt"),
            strip="VOCdevkit/",
        ),
    ),
}

# Images per split of the full datasets (the paper's splits: train2014 / val2014, trainval / test).
EXPECTED_IMAGES: dict[str, dict[str, int]] = {
    "coco": {"train2014": 82_783, "val2014": 40_504},
    "voc": {"trainval": 5_011, "test": 4_952},
}


def archives(dataset: str, mirror: str | None = None) -> tuple[Archive, ...]:
    """The archives of `dataset`; with `mirror`, each is fetched from `<mirror>/<name>` instead
    (same names, sizes and checksums: a local copy of the official files)."""
    found = ARCHIVES[dataset]
    if not mirror:
        return found
    if urllib.parse.urlsplit(mirror).scheme.lower() not in MIRROR_SCHEMES:
        raise MlicError(
            f"--mirror {mirror}: not a URL that can be fetched (expected it to start with "
            f"{', '.join(s + '://' for s in MIRROR_SCHEMES)})"
        )
    base = mirror.rstrip("/")
    return tuple(
        Archive(a.name, (f"{base}/{a.name}",), a.size, a.md5, a.kind, a.provides, a.strip)
        for a in found
    )
