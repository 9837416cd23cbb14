"""Images/s of the training input pipeline: JPEG decode + resize + RandAugment + to-tensor.

Does loading keep a GPU fed? The paper's model at 448 px trains at a few hundred images/s
on one modern GPU; this measures what one loader worker delivers, and N workers together
(through a real DataLoader with the project's collate), on this machine.

It writes its own JPEGs (COCO-like: 640x480, quality 90, natural-looking smooth content with
edges and texture, ~60-120 KB) into a temporary folder; nothing is downloaded.

    python benchmarks/input_pipeline.py                 # 448 px, 256 images, 0..cpu workers
    python benchmarks/input_pipeline.py --quick         # a few images (CI smoke run)
    python benchmarks/input_pipeline.py --image-size 576 --workers 1 4 8
    python benchmarks/input_pipeline.py --workers 1 8 15      # the 16-core GPU host
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader

from mlic.data.base import MultiLabelDataset, collate_skip_unreadable
from mlic.data.records import ObjectTable, SplitIndex
from mlic.data.transforms import make_transforms


def write_jpegs(
    folder: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0
) -> list[Path]:
    """Photo-like test images: blurred colour fields, shapes with edges, fine noise."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
            r = int(rng.integers(10, 120))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        image = image.filter(ImageFilter.GaussianBlur(1))
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        path = folder / f"{i:06d}.jpg"
        image.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def dataset_over(
    paths: list[Path], image_size: int, randaugment: bool, uint8: bool = False
) -> MultiLabelDataset:
    """The project's train pipeline over `paths`; uint8=True is what the engine loads (4x fewer
    bytes from the workers; `to_model_input` converts on the device)."""
    n = len(paths)
    index = SplitIndex(
        dataset="coco",
        split="bench",
        source=paths[0].parent,
        class_names=["thing"],
        files=np.array([str(p) for p in paths]),
        targets=np.zeros((n, 1), dtype=np.float32),
        ignore=np.zeros((n, 1), dtype=bool),
        sizes=np.zeros((n, 2), dtype=np.int64),
        objects=ObjectTable.from_rows([]),
    )
    return MultiLabelDataset(
        index, make_transforms(image_size, train=True, randaugment=randaugment, uint8=uint8)
    )


def per_worker(dataset: MultiLabelDataset, repeats: int) -> float:
    """images/s of one process calling __getitem__ (what one DataLoader worker does)."""
    torch.set_num_threads(1)
    dataset[0]  # warm-up
    start = time.perf_counter()
    count = 0
    for _ in range(repeats):
        for i in range(len(dataset)):
            dataset[i]
            count += 1
    return count / (time.perf_counter() - start)


def with_loader(dataset: MultiLabelDataset, workers: int, batch_size: int, repeats: int) -> float:
    """images/s through a DataLoader in steady state: the clock starts when the first batch
    arrives, and the workers persist across repeats (as the engine's do on a GPU), so worker
    start-up is excluded."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_skip_unreadable,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=workers > 0,
    )
    start, count = None, 0
    for _ in range(repeats):
        for images, *_ in loader:
            if start is None:
                start = time.perf_counter()
            else:
                count += images.shape[0]
    return count / (time.perf_counter() - start) if count else float("nan")


def loader_repeats(repeats: int, workers: int, batch_size: int, num_images: int) -> int:
    """Passes over the images for one loader measurement: at least `repeats`, and enough that
    each worker makes >= 6 batches. With fewer, N workers finish their first batches together
    and the clock, started at the first one, sees a burst instead of a steady rate."""
    batches_per_pass = max(num_images // batch_size, 1)
    return max(repeats, math.ceil(6 * max(workers, 1) / batches_per_pass))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="*", help="DataLoader worker counts")
    parser.add_argument("--quick", action="store_true", help="a few images: a smoke run for CI")
    args = parser.parse_args(argv)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.quick:
        args.num_images, args.batch_size, args.repeats = 12, 4, 1
        args.workers = args.workers or [2]
    workers = args.workers if args.workers is not None else sorted({1, 2, cpus or 1} - {0})

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.num_images)
        kb = np.mean([p.stat().st_size for p in paths]) / 1024
        print(
            f"{args.num_images} JPEGs 640x480 (mean {kb:.0f} KB) -> {args.image_size} px; "
            f"{cpus} CPUs; torch {torch.__version__}"
        )
        print(f"{'pipeline':<56}{'images/s':>10}")
        rows = []
        datasets = {
            (randaugment, uint8): dataset_over(paths, args.image_size, randaugment, uint8)
            for randaugment, uint8 in ((False, False), (True, False), (True, True))
        }
        for (randaugment, uint8), dataset in datasets.items():
            name = "decode+resize" + ("+RandAugment(2,9)" if randaugment else "")
            name += "+uint8 (engine)" if uint8 else "+float32"
            rows.append((f"{name}, 1 process", per_worker(dataset, args.repeats)))
        dataset, small = datasets[True, False], datasets[True, True]
        for w in workers:
            plural = "s" if w != 1 else ""
            repeats = loader_repeats(args.repeats, w, args.batch_size, args.num_images)
            rate = with_loader(dataset, w, args.batch_size, repeats)
            rows.append((f"DataLoader, {w} worker{plural}, float32 batches", rate))
            rate = with_loader(small, w, args.batch_size, repeats)
            rows.append((f"DataLoader, {w} worker{plural}, uint8 (engine)", rate))
        for name, rate in rows:
            print(f"{name:<56}{rate:>10.1f}")


if __name__ == "__main__":
    main()
