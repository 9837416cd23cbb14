"""`mlic evaluate`: a trained run's metrics on a labelled split, as training measured them.

The same evaluation as every epoch of `fit` (the engine's `metrics_of` over the scores of
`predict_dataset`), on the run's best checkpoint (or a given one); with the run's tuned
per-class thresholds (thresholds.json) also the companion metrics at those.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from mlic.data import build_dataset
from mlic.data.checks import require_labels
from mlic.engine import metrics_of
from mlic.errors import CheckpointError
from mlic.inference import load_trained, predict_dataset
from mlic.runtime import device_name
from mlic.thresholds import tuned_metrics


def evaluate_checkpoint(
    path: str | Path,
    *,
    split: str | None = None,
    data_root: str | None = None,
    device: str = "auto",
    max_images: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Metrics of a run directory's best checkpoint (or a checkpoint file) on a split; with the
    run's tuned per-class thresholds (thresholds.json) also the metrics at those, under `tuned`.
    """
    data: dict[str, Any] = {}
    if split:
        data["val_split"] = split
    if data_root:
        data["root"] = data_root
    if max_images:
        data["max_val_images"] = max_images
    trained = load_trained(path, device=device, data=data)
    cfg, rt, ckpt_path = trained.cfg, trained.rt, trained.checkpoint
    dataset = build_dataset(cfg.data, "val", uint8=True)
    require_labels(dataset.index, "evaluate a model")
    if list(dataset.class_names) != trained.class_names:
        raise CheckpointError(
            f"{ckpt_path}: the checkpoint's {len(trained.class_names)} classes differ from the "
            f"{len(dataset.class_names)} classes of {cfg.data.resolved_root()}"
        )
    if progress is None:
        progress = sys.stderr.isatty()
    start = time.perf_counter()
    scores, targets, ignore = predict_dataset(trained.model, dataset, cfg, rt, progress=progress)
    seconds = time.perf_counter() - start
    metrics = metrics_of(dataset, scores, targets, ignore)
    tuned = tuned_metrics(trained, scores, targets, ignore, split=cfg.data.split("val"))
    return {
        **metrics,
        **({"tuned": tuned} if tuned else {}),
        "checkpoint": str(ckpt_path),
        "weights": trained.weights,
        "epoch": trained.epoch,  # best.pt: the best epoch (metrics.json "best")
        "dataset": cfg.data.dataset,
        "split": cfg.data.split("val"),
        "image_size": cfg.data.image_size,
        "device": device_name(rt),
        "compiled": rt.compiler.compiled if rt.compiler else False,
        "seconds": seconds,
        "images_per_s": metrics["num_images"] / seconds if seconds else 0.0,
    }
