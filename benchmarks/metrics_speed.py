"""Time the metrics on a COCO val2014-sized problem: 40,504 images x 80 classes.

Labels are drawn with ~2.9 positives per image (COCO's mean, paper §2); scores are sigmoids of
noisy logits that favour the positives, so AP is mid-range. A second case rounds the scores
to bf16 (8 significant bits), which makes many ties. Prints the best of `--repeats` runs.

    python benchmarks/metrics_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from mlic.metrics import (
    average_precision,
    compute_metrics,
    mean_average_precision,
    threshold_metrics,
    topk_metrics,
)

N_IMAGES, N_CLASSES, POSITIVES_PER_IMAGE = 40_504, 80, 2.9


def make_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.random((N_IMAGES, N_CLASSES)) < POSITIVES_PER_IMAGE / N_CLASSES
    logits = rng.normal(size=targets.shape) + 2.5 * targets - 3.0
    return (1 / (1 + np.exp(-logits))).astype(np.float32), targets


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    probs, targets = make_problem()
    tied = torch.from_numpy(probs).bfloat16().float().numpy()
    distinct = len(np.unique(tied)) / tied.size
    print(
        f"{N_IMAGES} x {N_CLASSES}, {targets.sum(1).mean():.2f} positives/image; "
        f"bf16 case keeps {100 * distinct:.3f}% distinct scores; torch threads: "
        f"{torch.get_num_threads()}"
    )
    rows = [
        ("average_precision", lambda: average_precision(probs, targets)),
        ("average_precision (bf16 ties)", lambda: average_precision(tied, targets)),
        ("mean_average_precision", lambda: mean_average_precision(probs, targets)),
        ("threshold_metrics", lambda: threshold_metrics(probs, targets)),
        ("topk_metrics (k=3)", lambda: topk_metrics(probs, targets, 3)),
        ("compute_metrics (all)", lambda: compute_metrics(probs, targets)),
    ]
    try:
        from sklearn.metrics import average_precision_score
    except ImportError:  # pragma: no cover - sklearn is a test dependency only
        pass
    else:
        rows.append(
            (
                "sklearn average_precision_score",
                lambda: average_precision_score(targets, probs, average=None),
            )
        )
    width = max(len(name) for name, _ in rows)
    print(f"| {'function':<{width}} | seconds |")
    print(f"|{'-' * (width + 2)}|---------|")
    for name, fn in rows:
        print(f"| {name:<{width}} | {best_time(fn, args.repeats):7.3f} |")
    m_float, _ = mean_average_precision(probs, targets)
    m_tied, _ = mean_average_precision(tied, targets)
    print(f"mAP {m_float:.3f}% (float32) vs {m_tied:.3f}% (bf16-rounded scores, ties averaged)")


if __name__ == "__main__":
    main()
