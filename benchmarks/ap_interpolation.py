"""How much higher the interpolated VOC AP reads than the paper's non-interpolated AP.

Query2Label reports the interpolated VOC AP (its `voc_mAP` / `voc_ap`, taken from SSGRL): at each
positive it takes the best precision at that rank *or any later one* (the precision envelope).
The paper (eq. 3-5) and ASL use the plain precision at the positive's rank, which is what
`mlic.metrics` computes. The envelope can only raise a class's AP, and it raises it most where
precision zig-zags, i.e. where a class has few positives. So the gap depends on the size of the
evaluation set: this script measures it on a COCO val2014-sized problem (40,504 images x 80
classes) and, for comparison, on smaller sets.

Synthetic data, chosen to look like COCO: class frequencies fall off as a power law from 50 %
of the images (COCO's "person") with 2.9 labels per image on average (COCO's mean, paper §2);
scores are sigmoids of Gaussian logits shifted up by `separation` for the positives, with the
separation of each class drawn around the setting's value, so per-class AP spreads over a range
and the mAP is mid-to-high. Prints one Markdown row per setting.

    python benchmarks/ap_interpolation.py [--images 40504 2000] [--seeds 3]
"""

from __future__ import annotations

import argparse

import numpy as np

from mlic.metrics import average_precision

N_CLASSES, LABELS_PER_IMAGE, TOP_FREQUENCY = 80, 2.9, 0.5
SEPARATIONS = (2.75, 3.25, 3.75, 4.25)  # mean logit shift of positives: mAP from ~67 to ~93


def class_frequencies(k: int = N_CLASSES) -> np.ndarray:
    """f_c = TOP_FREQUENCY * c^-alpha (c = 1..k), alpha chosen so that sum f = 2.9 labels."""
    ranks = np.arange(1, k + 1, dtype=np.float64)
    lo, hi = 0.0, 5.0
    for _ in range(100):  # bisection: the sum falls as alpha grows
        alpha = (lo + hi) / 2
        if (TOP_FREQUENCY * ranks**-alpha).sum() > LABELS_PER_IMAGE:
            lo = alpha
        else:
            hi = alpha
    return TOP_FREQUENCY * ranks**-alpha


def make_problem(n: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n, K] in (0, 1), targets bool [n, K]); every class has at least one positive."""
    rng = np.random.default_rng(seed)
    freq = class_frequencies()
    targets = rng.random((n, N_CLASSES)) < freq
    empty = ~targets.any(axis=0)
    targets[rng.integers(0, n, size=empty.sum()), np.flatnonzero(empty)] = True
    shift = separation * rng.uniform(0.6, 1.4, size=N_CLASSES)  # classes differ in difficulty
    logits = rng.normal(size=targets.shape) + shift * targets - 3.0
    return 1.0 / (1.0 + np.exp(-logits)), targets


def interpolated_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class interpolated VOC AP in % (all points): the mean over a class's positives of the
    highest precision at its rank or below, as Query2Label's `voc_ap`. Ties keep the order of a
    stable sort (continuous scores have practically none)."""
    order = np.argsort(-scores, axis=0, kind="stable")
    pos = np.take_along_axis(targets, order, axis=0)  # [N, K], best first
    tp = np.cumsum(pos, axis=0)
    precision = tp / np.arange(1, len(scores) + 1)[:, None]
    envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]  # best precision from here on
    return 100.0 * (envelope * pos).sum(axis=0) / pos.sum(axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[40_504, 2_000])
    parser.add_argument("--seeds", type=int, default=3, help="problems per setting (mean shown)")
    args = parser.parse_args()

    freq = class_frequencies()
    print(
        f"{N_CLASSES} classes, label frequency {100 * freq.min():.2f}-{100 * freq.max():.0f} % "
        f"({freq.sum():.2f} labels per image); mean over {args.seeds} seed(s) per row\n"
    )
    print("| images | separation | mAP (paper, non-interpolated) | mAP (interpolated VOC) "
          "| gap, points | gap per class, min-max |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.images:
        for separation in SEPARATIONS:
            plain, interp, gaps = [], [], []
            for seed in range(args.seeds):
                scores, targets = make_problem(n, separation, seed)
                ap = average_precision(scores, targets)  # the project's AP (paper eq. 3-5)
                ap_interp = interpolated_ap(scores, targets)
                plain.append(ap.mean())
                interp.append(ap_interp.mean())
                gaps.append(ap_interp - ap)
            gap = np.concatenate(gaps)
            print(
                f"| {n:,} | {separation} | {np.mean(plain):.2f} | {np.mean(interp):.2f} "
                f"| +{np.mean(interp) - np.mean(plain):.2f} | {gap.min():+.2f} to {gap.max():+.2f} |"
            )


if __name__ == "__main__":
    main()
