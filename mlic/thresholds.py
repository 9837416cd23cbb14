"""Per-class decision thresholds: for each class, the score threshold that maximises its F1.

Why: with ASL's strong negative focusing the sigmoid scores sit high, so the fixed 0.5 of the
companion metrics predicts far too many labels (high recall, low precision). A threshold per
class, chosen on labelled images the model did not train on, fixes that for deployment.

Which images choose them (`data.calibration_fraction`):
- 0 (default): the validation split. Training is unchanged, but the validation split is then
  no longer independent of the thresholds: CP/CR/CF1/OP/OR/OF1 at the tuned thresholds on that
  split are optimistic, because each threshold was picked as the best of many candidates *on
  those very images* (the maximum of a noisy curve overstates its expected value, and more so
  for rare classes with few positives). mAP does not depend on thresholds and stays fair.
- f > 0: a fixed random fraction f of the training split (drawn from train.seed) is held out
  of training and chooses the thresholds; the validation split stays untouched and its tuned
  metrics are a fair estimate, at the price of training on fewer images.
`mlic calibrate RUN --split NAME` chooses them on any other labelled split of the dataset.

Rule: the scores of the chosen images are sorted; F1 is evaluated at every cut between two
distinct scores (a label is predicted when score >= threshold) and the best cut wins (ties: the
higher threshold, i.e. fewer predictions); the threshold is the midpoint between the lowest
score kept and the highest score left out. A class without positives in the chosen images keeps
the default 0.5 and is listed under `default_classes`.

`thresholds.json` (in the run directory) records the thresholds by class name, the rule, the
split and images that chose them, the checkpoint (file and epoch) they belong to, and the F1 of
each class there (optimistic, see above).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mlic.data import MultiLabelDataset, build_dataset, build_transforms
from mlic.data.checks import require_labels
from mlic.data.holdout import split_holdout
from mlic.distributed import DistInfo
from mlic.errors import MlicError
from mlic.inference import Trained, load_trained, predict_dataset
from mlic.metrics import ArrayLike, prepare_arrays, threshold_metrics_per_class
from mlic.outputs import check_out
from mlic.runrecord import write_json
from mlic.runtime import Runtime
from mlic.safeload import load_json

FORMAT = "mlic-thresholds-1"
FILE_NAME = "thresholds.json"
DEFAULT_THRESHOLD = 0.5
RULE = (
    "per class, the threshold maximising F1 (score >= threshold predicts the label) over all "
    "cuts between distinct scores of the calibration images; midpoint of the cut; ties -> the "
    f"higher threshold; classes without positives keep {DEFAULT_THRESHOLD}"
)


class ThresholdsError(MlicError):
    """A thresholds.json that is missing, unreadable, or belongs to another checkpoint."""


def f1_thresholds(
    scores: ArrayLike, targets: ArrayLike, ignore: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds [K], best F1 in % [K]; NaN where a class has no positives): the rule above."""
    s, t, valid = prepare_arrays(scores, targets, ignore)
    k = s.shape[1]
    thresholds = np.full(k, DEFAULT_THRESHOLD, dtype=np.float64)
    best_f1 = np.full(k, np.nan)
    for c in range(k):
        sc = s[valid[:, c], c].astype(np.float64)
        pos = t[valid[:, c], c]
        num_pos = int(pos.sum())
        if num_pos == 0:
            continue
        order = np.argsort(-sc, kind="stable")
        sc, pos = sc[order], pos[order]
        # Cut only after the last of a run of equal scores: ties fall on the same side.
        ends = np.flatnonzero(np.append(sc[1:] != sc[:-1], True))
        tp = np.cumsum(pos)[ends]
        predicted = ends + 1
        f1 = 2.0 * tp / (predicted + num_pos)
        best = int(np.argmax(f1))  # the first maximum: the highest threshold
        kept, end = sc[ends[best]], ends[best]
        thresholds[c] = (kept + sc[end + 1]) / 2.0 if end + 1 < len(sc) else kept
        best_f1[c] = 100.0 * f1[best]
    return thresholds, best_f1


def calibration_record(
    scores: ArrayLike,
    targets: ArrayLike,
    ignore: ArrayLike | None,
    class_names: list[str],
    *,
    chosen_on: dict[str, Any],
    checkpoint: dict[str, Any],
) -> dict[str, Any]:
    """The JSON-able content of thresholds.json (module docstring)."""
    thresholds, f1 = f1_thresholds(scores, targets, ignore)
    at_tuned = threshold_metrics_per_class(scores, targets, thresholds, ignore)
    return {
        "format": FORMAT,
        "rule": RULE,
        "chosen_on": chosen_on,
        "checkpoint": checkpoint,
        "class_names": list(class_names),
        "thresholds": {n: float(v) for n, v in zip(class_names, thresholds, strict=True)},
        "f1_on_chosen_images": {
            n: (None if math.isnan(v) else float(v)) for n, v in zip(class_names, f1, strict=True)
        },
        "metrics_on_chosen_images": {
            key: (None if math.isnan(v) else v) for key, v in at_tuned.items()
        },
        "optimistic_note": (
            "F1 and the metrics above are measured on the images that chose the thresholds, "
            "so they are optimistic: they overstate what unseen images will give"
        ),
        "default_classes": [n for n, v in zip(class_names, f1, strict=True) if math.isnan(v)],
        "default_threshold": DEFAULT_THRESHOLD,
    }


def describe(record: dict[str, Any]) -> str:
    """One line: where the thresholds were chosen, for the output of train/calibrate."""
    on = record["chosen_on"]
    defaults = len(record["default_classes"])
    tail = f"; {defaults} class(es) without positives keep {DEFAULT_THRESHOLD}" if defaults else ""
    if on["kind"] != "train_holdout":
        tail += "; metrics at these thresholds on that split are optimistic"
    return f"per-class thresholds chosen on {on['description']} ({on['num_images']} images){tail}"


# --------------------------------------------------------------------------- reading


def thresholds_path(run_dir: Path) -> Path:
    return Path(run_dir) / FILE_NAME


MAX_THRESHOLDS_BYTES = 16 << 20  # a thresholds.json for 80 classes is about 10 KB
MAX_THRESHOLDS_DEPTH = 8  # the file nests 3 levels


def read_thresholds(path: str | Path, trained: Trained | None = None) -> dict[str, Any]:
    """A thresholds.json, read like every file we parse (bounded size and nesting) and checked
    field by field (what predict, evaluate and export use); given `trained`, it must be made
    for the same class names and the same checkpoint file and epoch. Every problem is one
    ThresholdsError naming the file."""
    path = Path(path)
    if not os.path.lexists(path):
        raise ThresholdsError(f"{path}: no thresholds file; run `mlic calibrate` on the run first")
    try:
        record = load_json(path, max_bytes=MAX_THRESHOLDS_BYTES, max_depth=MAX_THRESHOLDS_DEPTH)
    except MlicError as exc:
        raise ThresholdsError(str(exc)) from None
    problem = _record_problem(record)
    if problem:
        raise ThresholdsError(f"{path}: {problem}; run `mlic calibrate` again")
    names = record["class_names"]
    if trained is not None:
        if names != trained.class_names:
            raise ThresholdsError(
                f"{path}: made for {len(names)} other classes ({_names(names)}) than the "
                f"checkpoint's {len(trained.class_names)} ({_names(trained.class_names)}); run "
                "`mlic calibrate` again"
            )
        made_for = record["checkpoint"]
        here = _checkpoint_info(trained)
        if (made_for["file"], made_for["epoch"]) != (here["file"], here["epoch"]):
            raise ThresholdsError(
                f"{path}: chosen for {made_for['file']} (epoch {made_for['epoch']}), not "
                f"for {here['file']} (epoch {here['epoch']}); run `mlic calibrate` again"
            )
    return record


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n)[:40] for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def _record_problem(record: Any) -> str | None:
    """What is wrong with a parsed thresholds.json (None if nothing): the fields later code
    reads, each of its type (a number in [0, 1] for every threshold, NaN refused)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return f"not an mlic thresholds file (format {FORMAT!r})"
    names, values = record.get("class_names"), record.get("thresholds")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "class_names is not a non-empty list of class names"
    if len(set(names)) != len(names):
        return "class_names lists a class twice"
    if not isinstance(values, dict):
        return "thresholds is not an object {class name: threshold}"
    for name in names:
        if name not in values:
            return f"no threshold for class {name[:60]!r}"
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
            return f"threshold of class {name[:60]!r} is {str(v)[:20]}, not a number in [0, 1]"
    on = record.get("chosen_on")
    if not isinstance(on, dict):
        return "chosen_on is not an object (where the thresholds were chosen)"
    for key, types in (("kind", str), ("description", str), ("split", str | None)):
        if not isinstance(on.get(key), types) or key not in on:
            return f"chosen_on.{key} is missing or not a string"
    ckpt = record.get("checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("file"), str):
        return "checkpoint.file is missing or not a string (the checkpoint they were chosen for)"
    epoch = ckpt.get("epoch")
    if "epoch" not in ckpt or isinstance(epoch, bool) or not isinstance(epoch, int | None):
        return "checkpoint.epoch is missing or not an integer"
    return None


def threshold_vector(record: dict[str, Any]) -> np.ndarray:
    """The thresholds [K] in the order of the record's class names."""
    return np.array([record["thresholds"][n] for n in record["class_names"]], dtype=np.float64)


def _checkpoint_info(trained: Trained) -> dict[str, Any]:
    return {"file": trained.checkpoint.name, "epoch": trained.epoch, "weights": trained.weights}


# --------------------------------------------------------------------------- running


def calibration_dataset(cfg, split: str | None = None):
    """(dataset, description dict) of the images that choose the thresholds for `cfg`:
    `split` if given, else the held-out part of the training split when
    data.calibration_fraction > 0, else the validation split."""
    data = cfg.data
    if split:
        dataset = build_dataset(replace(data, val_split=split), "val", uint8=True)
        what = f"split {split!r} (chosen with --split)"
        kind = "split"
    elif data.calibration_fraction > 0:
        full = build_dataset(data, "train", uint8=True)
        _, held = split_holdout(full.index, data.calibration_fraction, cfg.train.seed)
        dataset = MultiLabelDataset(
            held, build_transforms(data, train=False, uint8=True), skip_unreadable=False
        )
        split = data.split("train")
        what = (
            f"{data.calibration_fraction:g} of the training split {split!r}, held out of "
            "training (the validation split stays independent)"
        )
        kind = "train_holdout"
    else:
        dataset = build_dataset(data, "val", uint8=True)
        split = data.split("val")
        what = f"the validation split {split!r} (data.calibration_fraction=0)"
        kind = "val"
    return dataset, {
        "kind": kind,
        "dataset": data.dataset,
        "split": split,
        "fraction": data.calibration_fraction if kind == "train_holdout" else None,
        "seed": cfg.train.seed if kind == "train_holdout" else None,
        "num_images": len(dataset),
        "description": what,
    }


def calibrate(
    trained: Trained,
    *,
    split: str | None = None,
    out: Path | None = None,
    force: bool = False,
    progress: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Choose the thresholds of a loaded run and write thresholds.json atomically (into the run
    directory unless `out`); returns (record, path). An `out` that is an input (the checkpoint,
    the dataset's files) or another run record's file is refused, an existing one replaced only
    with `force` (mlic/outputs.py); the run's own thresholds.json is always replaced."""
    own = thresholds_path(trained.run_dir) if trained.run_dir is not None else None
    if out is None:
        if own is None:
            raise MlicError(
                f"{trained.checkpoint}: not inside a run directory; give --out for thresholds.json"
            )
        out = own
    dataset, chosen_on = calibration_dataset(trained.cfg, split)
    index = dataset.index
    read = [trained.checkpoint, *index.input_paths()]
    if trained.run_dir is not None:
        read.append(trained.run_dir / "config.yaml")
    check_out(out, inputs=read, owned=[own] if own else [], force=force)
    require_labels(index, "choose thresholds")
    if list(dataset.class_names) != trained.class_names:
        raise MlicError(
            f"{trained.checkpoint}: the checkpoint's {len(trained.class_names)} classes differ "
            f"from the {len(dataset.class_names)} classes of {chosen_on['split']}"
        )
    scores, targets, ignore = predict_dataset(
        trained.model, dataset, trained.cfg, trained.rt, progress=progress
    )
    record = calibration_record(
        scores.numpy(),
        targets.numpy(),
        ignore.numpy().astype(bool),
        trained.class_names,
        chosen_on=chosen_on,
        checkpoint=_checkpoint_info(trained),
    )
    write_json(Path(out), record)
    return record, Path(out)


def calibrate_after_training(run_dir: Path, rt: Runtime) -> tuple[dict[str, Any], Path]:
    """End of `fit`: thresholds for the checkpoint that predict/evaluate will load (best.pt,
    else last.pt), computed in this process alone (no collective calls under DDP)."""
    local = replace(rt, dist=DistInfo())
    trained = load_trained(run_dir, device=str(rt.device), rt=local)
    return calibrate(trained)


def tuned_metrics(
    trained: Trained, scores: ArrayLike, targets: ArrayLike, ignore: ArrayLike, *, split: str
) -> dict[str, Any] | None:
    """CP..OF1 at the run's tuned thresholds (None without thresholds.json), with where they
    were chosen and whether that is the evaluated split (then they are optimistic). Thresholds
    made for another checkpoint (e.g. best.pt when last.pt is evaluated) are not used:
    `{"unavailable": reason}`."""
    if trained.run_dir is None or not os.path.lexists(thresholds_path(trained.run_dir)):
        return None
    try:
        record = read_thresholds(thresholds_path(trained.run_dir), trained)
    except ThresholdsError as exc:
        return {"unavailable": str(exc)}
    metrics = threshold_metrics_per_class(scores, targets, threshold_vector(record), ignore)
    on = record["chosen_on"]
    same = on.get("kind") in ("val", "split") and on.get("split") == split
    return {
        **{k: (None if math.isnan(v) else v) for k, v in metrics.items()},
        "chosen_on": on["description"],
        "chosen_on_this_split": bool(same),
        "thresholds_file": str(thresholds_path(trained.run_dir)),
    }
