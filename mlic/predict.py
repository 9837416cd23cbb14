"""`mlic predict`: a trained run on your own images.

Multi-label output is a sigmoid per class (never a softmax across classes). Each image gets a
score for every class and the labels whose score reaches the threshold: one value for all
classes (`--threshold`, default 0.5) or the run's tuned per-class thresholds
(`--thresholds tuned`, from `mlic calibrate`). Preprocessing is the run's own evaluation
pipeline (resize to the run's size, its mean/std), and the network is the deployed one (the
model in eval mode: no BatchFormerV2 stream).

Inputs are files, folders (walked recursively for image files) and glob patterns. Anything that
cannot be predicted - a missing path, something that is not a regular file (a FIFO would block
a reader forever), a folder or file we may not read, a file that does not decode - is skipped,
listed with its reason, and counted; without a single predicted image the command fails. File
names are printed with control characters escaped (one image, one line).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, SequentialSampler
from tqdm import tqdm

from mlic.compilation import Compiler
from mlic.config_rules import batch_pixels_problem
from mlic.data.images import open_rgb
from mlic.data.transforms import build_transforms
from mlic.discover import discover_images
from mlic.errors import DataError, MlicError
from mlic.inference import Trained, checkpoint_of, forward, load_trained
from mlic.loaders import build_loader, images_to_device
from mlic.model_card import cautions, image_sides, model_card
from mlic.outputs import check_out
from mlic.runrecord import atomic_write_text
from mlic.thresholds import read_thresholds, threshold_vector, thresholds_path

Format = Literal["table", "csv", "json", "jsonl"]
FORMATS: tuple[str, ...] = ("table", "csv", "json", "jsonl")


class ImageFiles(Dataset):
    """Image files -> (uint8 [3, S, S], position) or (None, position, reason) if undecodable."""

    def __init__(self, files: Sequence[Path], transform: Callable) -> None:
        self.files = [str(f) for f in files]  # plain strings: cheap for forked workers
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return self.transform(open_rgb(self.files[i])), i, ""
        except DataError as exc:
            return None, i, str(exc).removeprefix(f"{self.files[i]}: ")


def _collate(batch):
    images = [b[0] for b in batch if b[0] is not None]
    positions = [b[1] for b in batch if b[0] is not None]
    failed = [(b[1], b[2]) for b in batch if b[0] is None]
    stacked = torch.stack(images) if images else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return stacked, positions, failed


@dataclass
class Predictions:
    """Scores [N, K] (sigmoid, float32) of the predicted files, in the order of `files`."""

    files: list[Path]
    scores: np.ndarray
    class_names: list[str]
    skipped: list[tuple[str, str]]
    ignored_in_folders: int = 0

    def labelled(
        self, thresholds: np.ndarray | float = 0.5, top_k: int = 0
    ) -> list[list[tuple[str, float]]]:
        """Per image, its predicted (class name, score) pairs, best first (`predicted_labels`)."""
        chosen = predicted_labels(self.scores, thresholds, top_k)
        return [
            [(self.class_names[c], float(row[c])) for c in cs]
            for row, cs in zip(self.scores, chosen, strict=True)
        ]


@torch.no_grad()
def predict_files(
    trained: Trained,
    files: Sequence[Path],
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[list[Path], np.ndarray, list[tuple[str, str]]]:
    """(files predicted, scores [N, K], skipped (file, reason)) for a loaded run (`Trained`),
    through the evaluation path (its loader, device copy, autocast and compiled forward)."""
    cfg, rt, model = trained.cfg, trained.rt, trained.model
    model.eval()
    compiler = rt.compiler or Compiler(False)
    net = compiler.wrap(model)  # compiled on CUDA as in evaluation; eager after a failure
    dataset = ImageFiles(files, build_transforms(cfg.data, train=False, uint8=True))
    loader = build_loader(
        dataset, batch_size or cfg.train.eval_batch_size, SequentialSampler(dataset), cfg, rt,
        train=False,
    )  # fmt: skip
    loader.collate_fn = _collate
    scores: list[torch.Tensor] = []
    done: list[int] = []
    skipped: list[tuple[str, str]] = []
    for images, positions, failed in tqdm(
        loader, desc="predict", disable=not progress, leave=False, dynamic_ncols=True
    ):
        skipped.extend((dataset.files[i], reason) for i, reason in failed)
        if not positions:
            continue
        images = images_to_device(images, rt, cfg.data)
        logits = compiler.run(net, forward, images, rt)  # [B, K]
        scores.append(torch.sigmoid(logits.float()).cpu())
        done.extend(positions)
    k = len(trained.class_names)
    out = torch.cat(scores).numpy() if scores else np.zeros((0, k), dtype=np.float32)
    return [Path(dataset.files[i]) for i in done], out, skipped


def predict_images(
    trained: Trained,
    inputs: Sequence[str | Path],
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> Predictions:
    """Discover `inputs` (files, folders, globs) and score every readable image."""
    found = discover_images(inputs)
    progress = progress and len(found.files) > 1
    files, scores, failed = predict_files(
        trained, found.files, batch_size=batch_size, progress=progress
    )
    return Predictions(
        files, scores, trained.class_names, found.skipped + failed, found.ignored_in_folders
    )


# --------------------------------------------------------------------------- labels and output


def predicted_labels(
    scores: np.ndarray, thresholds: np.ndarray | float, top_k: int = 0
) -> list[list[int]]:
    """Per image, the class indices with score >= threshold (per class or one for all), best
    first; with top_k > 0 only the k best of those (ties: the lower class index)."""
    th = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), scores.shape[1:])
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")
        chosen = [int(c) for c in order if row[c] >= th[c]]
        out.append(chosen[:top_k] if top_k > 0 else chosen)
    return out


def printable(text: str) -> str:
    """`text` with control characters escaped (a newline in a file name is shown as \\n), so one
    image stays one line of a table or a message; csv and json quote them themselves."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _csv_line(fields: list[str]) -> str:
    """One CSV row ending in "\\n". The writer is told the terminator is "\\r\\n" so that it
    quotes a field holding either character (a file name with "\\r" would otherwise come out
    unquoted, which CSV readers refuse)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(fields)
    return buf.getvalue()[:-2] + "\n"


def render(
    preds: Predictions,
    labels: list[list[int]],
    fmt: Format,
    *,
    header: dict[str, Any],
    model_line: str = "",
) -> str:
    """The predictions as text in one of FORMATS (stable: input order, classes in model order);
    `table` starts with `model_line` (what the model knows, `mlic.model_card`) when given."""
    names = preds.class_names
    if fmt == "table":
        shown = [printable(str(f)) for f in preds.files]
        width = max((len(f) for f in shown), default=5)
        lines = [printable(model_line)] if model_line else []
        lines.append(f"{'image':<{width}}  labels (score)")
        for f, row, chosen in zip(shown, preds.scores, labels, strict=True):
            text = ", ".join(f"{printable(names[c])} ({row[c]:.3f})" for c in chosen) or "-"
            lines.append(f"{f:<{width}}  {text}")
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        lines = [_csv_line(["image", "labels", *names])]
        for f, row, chosen in zip(preds.files, preds.scores, labels, strict=True):
            lines.append(
                _csv_line([str(f), "|".join(names[c] for c in chosen), *(f"{v:.6f}" for v in row)])
            )
        return "".join(lines)
    records = [
        {
            "image": str(f),
            "labels": [names[c] for c in chosen],
            "scores": {n: float(v) for n, v in zip(names, row, strict=True)},
        }
        for f, row, chosen in zip(preds.files, preds.scores, labels, strict=True)
    ]
    if fmt == "jsonl":
        return "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    if fmt == "json":
        doc = {
            **header,
            "class_names": names,
            "images": records,
            "skipped": [{"image": f, "reason": r} for f, r in preds.skipped],
        }
        return json.dumps(doc, indent=2, allow_nan=False) + "\n"
    raise MlicError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def run_predict(
    path: str | Path,
    inputs: Sequence[str],
    *,
    threshold: float | None = None,
    thresholds: str | None = None,
    top_k: int = 0,
    fmt: Format = "table",
    out: str | Path | None = None,
    force: bool = False,
    batch_size: int | None = None,
    device: str = "auto",
    progress: bool | None = None,
    stdout=None,
    stderr=None,
) -> int:
    """The whole command; returns the number of images predicted (0 raises MlicError).

    Skipped inputs are listed on `stderr` with a count; the output goes to `out` (written
    atomically, only when at least one image was predicted) or `stdout`. `out` is refused when
    it is one of the command's inputs or a run record's file, and when it exists without
    `force` (mlic/outputs.py).
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if fmt not in FORMATS:
        raise MlicError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if threshold is not None and thresholds is not None:
        raise MlicError("give --threshold or --thresholds, not both")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise MlicError(f"--threshold {threshold}: a score threshold lies in [0, 1]")
    if top_k < 0:
        raise MlicError(f"--top-k {top_k}: must be >= 0 (0: no limit)")
    if batch_size is not None and batch_size < 1:
        raise MlicError(f"--batch-size {batch_size}: must be >= 1")
    found = discover_images(inputs)  # before the model: a bad --out costs nothing
    ckpt_path, run_dir = checkpoint_of(path)
    source: Path | None = None
    if thresholds == "tuned":
        if run_dir is None:
            raise MlicError(f"{path}: --thresholds tuned needs a run directory")
        source = thresholds_path(run_dir)
    elif thresholds is not None:
        source = Path(thresholds)
    if out is not None:
        read = [ckpt_path, *found.files, *(i for i in map(str, inputs) if os.path.lexists(i))]
        if run_dir is not None:
            read.append(run_dir / "config.yaml")
        check_out(out, inputs=read + ([source] if source else []), force=force)
    trained = load_trained(path, device=device)
    card = model_card(trained)
    size = trained.cfg.data.image_size
    problem = batch_pixels_problem(batch_size or trained.cfg.train.eval_batch_size, size, False)
    if problem:
        raise MlicError(f"{'--batch-size' if batch_size else trained.checkpoint}: {problem}")
    if source is not None:
        record = read_thresholds(source, trained)
        cut: np.ndarray | float = threshold_vector(record)
        rule = {"thresholds": str(source), "chosen_on": record["chosen_on"]["description"]}
    else:
        cut = 0.5 if threshold is None else float(threshold)
        rule = {"threshold": cut}
    if progress is None:
        progress = stderr.isatty()
    progress = progress and len(found.files) > 1
    files, scores, failed = predict_files(
        trained, found.files, batch_size=batch_size, progress=progress
    )
    preds = Predictions(
        files, scores, trained.class_names, found.skipped + failed, found.ignored_in_folders
    )
    for file, reason in preds.skipped:
        print(f"mlic: skipped {printable(file)}: {reason}", file=stderr)
    if preds.ignored_in_folders:
        print(
            f"mlic: ignored {preds.ignored_in_folders} file(s) without an image suffix in folders",
            file=stderr,
        )
    if not files:
        raise MlicError(
            f"no image predicted ({len(preds.skipped)} input(s) skipped)"
            + (f"; {out} not written" if out else "")
        )
    if fmt != "table":  # the table carries it as its first line, the JSON document in "model"
        print(f"mlic: {printable(card.line())}", file=stderr)
    for line in cautions(card, image_sides(files)):
        print(f"mlic: caution: {printable(line)}", file=stderr)
    header = {
        "checkpoint": str(trained.checkpoint),
        "epoch": trained.epoch,
        **rule,
        "model": card.as_dict(),
    }
    text = render(
        preds, predicted_labels(scores, cut, top_k), fmt, header=header, model_line=card.line()
    )
    if out is not None:
        atomic_write_text(Path(out), text)
    else:
        stdout.write(text)
        stdout.flush()
    summary = f"mlic: predicted {len(files)} image(s)"
    if preds.skipped:
        summary += f", skipped {len(preds.skipped)}"
    print(summary + (f" -> {out}" if out else ""), file=stderr)
    return len(files)
