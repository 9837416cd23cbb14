"""What each configuration value may be: one table of ranges and choices, one list of relations.

`mlic.config.validate` applies both to every `Config`, whatever it came from (a preset, a
config.yaml, `--set`, a checkpoint, a notebook), so no out-of-range value reaches torch, timm
or the data loaders. A new numeric key gets a line in `RULES` (a test checks that every
int/float key has one); a check between keys goes into `RELATIONS`.

Upper bounds exist for every size that allocates memory, so a typo cannot grow the process
until the kernel kills it; each says its limit in the error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_IMAGE_SIZE = 2048  # px; the paper uses 448 and 576
MAX_BATCH = 4096
MAX_WIDTH = 16384  # d_model, dim_feedforward (the paper: 2048, 8192)
# Pixels of one batch (images x image_size^2), what memory grows with. Measured on the CPU with
# the embedded preset's network: a training step (forward and backward) takes 0.65-0.9 KB per
# pixel, an evaluation batch about 0.11 KB. 2^24 training pixels (32 images at 724 px, or the
# paper's micro-batch of 48 at 576 px) are 11-15 GB, 2^26 evaluation pixels (128 at 724 px)
# about 7.5 GB: both fit a 16-24 GB machine; 32 images at 2048 px (134 M pixels) would need
# about 100 GB and die in the allocator.
MAX_TRAIN_PIXELS = 1 << 24
MAX_EVAL_PIXELS = 1 << 26
KB_PER_PIXEL = {True: 0.9, False: 0.11}  # training, evaluation: the measured upper ends


@dataclass(frozen=True)
class Range:
    """A closed or open interval for a number (each element, for a list of numbers).

    Non-finite values (NaN, inf) are always refused."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is refused (e.g. lr > 0)
    high_open: bool = False
    why: str = ""  # appended to the error, e.g. the reason for an upper bound

    def problem(self, value: Any) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return "is not a finite number"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {_num(self.high)}"
        return None


@dataclass(frozen=True)
class Pattern:
    """A string that must match a regular expression (described for the error)."""

    regex: str
    description: str

    def problem(self, value: Any) -> str | None:
        if re.fullmatch(self.regex, value):
            return None
        return f"is not {self.description}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def positive(why: str = "") -> Range:
    return Range(0, low_open=True, why=why)


def at_least(low: float, high: float | None = None, why: str = "") -> Range:
    return Range(low, high, why=why)


# A plain name: a file or folder name, never a path (names become paths: results/runs/<name>).
PLAIN_NAME = Pattern(r"(?!\.\.?$)[^/\\\x00]+", "a plain name (no '/', '\\', NUL, '.' or '..')")
SPLIT_NAME = Pattern(r"((?!\.\.?$)[^/\\\x00]+)?", "a split name (no '/', '\\', NUL, '.' or '..')")

RULES: dict[str, Range | Pattern] = {
    "name": PLAIN_NAME,
    "data.train_split": SPLIT_NAME,
    "data.val_split": SPLIT_NAME,
    "data.image_size": Range(
        32,
        MAX_IMAGE_SIZE,
        why=f"(memory: a training micro-batch may hold {MAX_TRAIN_PIXELS / 1e6:.1f} M pixels, "
        f"about {MAX_TRAIN_PIXELS * KB_PER_PIXEL[True] / 1e6:.0f} GB on a CPU, e.g. 4 images "
        f"at {MAX_IMAGE_SIZE} px)",
    ),
    "data.mean": Range(-10.0, 10.0),
    "data.std": Range(0, 10.0, low_open=True),
    "data.randaugment_ops": Range(0, 16),
    "data.randaugment_magnitude": Range(0, 30, why="(torchvision's 31 magnitude bins)"),
    "data.cutmix_prob": Range(0, 1),
    "data.cutmix_alpha": positive(),
    "data.num_workers": Range(0, 256),
    "data.max_train_images": Range(0),
    "data.max_val_images": Range(0),
    "data.calibration_fraction": Range(0, 1, high_open=True),
    "model.d_model": Range(1, MAX_WIDTH),
    "model.nhead": Range(1, 256),
    "model.num_encoder_layers": Range(1, 64),
    "model.num_decoder_layers": Range(1, 64),
    "model.dim_feedforward": Range(1, 4 * MAX_WIDTH),
    "model.dropout": Range(0, 1, high_open=True),
    "loss.gamma_neg": Range(0, 100),
    "loss.gamma_pos": Range(0, 100),
    "loss.clip": Range(0, 1, high_open=True),
    "loss.eps": Range(0, 1, low_open=True, high_open=True),
    "train.epochs": Range(1, 100_000),
    "train.batch_size": Range(1, MAX_BATCH),
    "train.eval_batch_size": Range(1, MAX_BATCH),
    "train.accumulation_steps": Range(1, MAX_BATCH),
    "train.lr": Range(0, 10, low_open=True),
    "train.div_factor": positive(),
    "train.final_div_factor": positive(),
    "train.pct_start": Range(0, 1, low_open=True, high_open=True),
    "train.weight_decay": Range(0, 10),
    "train.batchformer_weight_decay": Range(0, 10),
    "train.grad_clip": Range(0),
    "train.ema_decay": Range(0, 1, high_open=True),
    "train.seed": Range(0, 2**32 - 1),
    "train.device": Pattern(r"auto|cpu|mps|cuda(:\d{1,3})?", "auto, cpu, mps, cuda or cuda:N"),
    "train.compile_mode": Pattern(
        r"default|reduce-overhead|max-autotune|max-autotune-no-cudagraphs",
        "one of default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs",
    ),
}


def _d_model_divisible(cfg: Any) -> str | None:
    m = cfg.model
    if m.head != "gap" and m.d_model % m.nhead:
        return f"model.d_model={m.d_model} is not divisible by model.nhead={m.nhead}"
    return None


def _dual_needs_two(cfg: Any) -> str | None:
    if cfg.model.head == "dual" and cfg.train.batch_size < 2:
        return (
            f"train.batch_size={cfg.train.batch_size} must be >= 2 for the dual head: "
            "it attends across the batch"
        )
    return None


def _accumulation_divides_batch(cfg: Any) -> str | None:
    t = cfg.train
    if t.batch_size % t.accumulation_steps:
        return (
            f"train.accumulation_steps={t.accumulation_steps} must divide "
            f"train.batch_size={t.batch_size}"
        )
    if cfg.model.head == "dual" and t.batch_size // t.accumulation_steps < 2:
        return (
            f"train.accumulation_steps={t.accumulation_steps} leaves micro-batches of "
            f"{t.batch_size // t.accumulation_steps} image: the dual head needs >= 2 "
            "(each micro-batch attends across itself)"
        )
    return None


def _threads(cfg: Any) -> str | None:
    n = cfg.train.num_threads
    if n != "auto" and not 1 <= n <= 1024:
        return f"train.num_threads={short_repr(n)} must be auto or from 1 to 1024"
    return None


def _csv_needs_root(cfg: Any) -> str | None:
    if cfg.data.dataset == "csv" and not cfg.data.root:
        return "data.dataset=csv needs data.root: the folder holding <split>.csv"
    return None


def _three_channels(cfg: Any) -> str | None:
    for key in ("mean", "std"):
        if len(getattr(cfg.data, key)) != 3:
            return f"data.{key}={getattr(cfg.data, key)} needs three values (RGB)"
    return None


def _backbone_kwargs_sizes(cfg: Any) -> str | None:
    """timm allocates whatever widths backbone_kwargs asks for: bound every number in it."""
    stack = [cfg.model.backbone_kwargs]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif (
            isinstance(item, int | float)
            and not isinstance(item, bool)
            and not abs(item) <= MAX_WIDTH  # NaN fails too
        ):
            return (
                f"model.backbone_kwargs holds {short_repr(item)}: numbers there must be "
                f"finite and at most {MAX_WIDTH} in size (the limit bounds the memory)"
            )
    return None


def batch_pixels_problem(batch: int, image_size: int, train: bool) -> str | None:
    """Why `batch` images of `image_size` px are too many for one pass (None if they fit):
    memory grows with the batch's pixels (MAX_TRAIN_PIXELS, MAX_EVAL_PIXELS)."""
    pixels = batch * image_size * image_size
    limit = MAX_TRAIN_PIXELS if train else MAX_EVAL_PIXELS
    if pixels <= limit:
        return None
    what = "training micro-batch" if train else "evaluation batch"
    need = pixels * KB_PER_PIXEL[train] / 1e6
    return (
        f"{batch} images at {image_size} px are {pixels / 1e6:.1f} M pixels per {what}, over "
        f"the limit of {limit / 1e6:.1f} M (about {need:.0f} GB on a CPU, measured "
        f"{KB_PER_PIXEL[train]} KB per pixel; the limit is about "
        f"{limit * KB_PER_PIXEL[train] / 1e6:.0f} GB)"
    )


def _batch_memory(cfg: Any) -> str | None:
    # On a GPU the card's memory decides (torch's out-of-memory error names it), and the paper's
    # batch 128 at 448 px fits an 80 GB card; train.device=auto is checked by
    # mlic.engine.make_runtime once it resolves to the CPU.
    if cfg.train.device != "cpu":
        return None
    return cpu_batch_memory_problem(cfg)


def cpu_batch_memory_problem(cfg: Any) -> str | None:
    """Why the configuration's batches do not fit this machine class's memory on the CPU."""
    size, t = cfg.data.image_size, cfg.train
    micro = t.batch_size // t.accumulation_steps
    problem = batch_pixels_problem(micro, size, train=True)
    if problem:
        return (
            f"train.batch_size={t.batch_size} with data.image_size={size}: {problem}; lower "
            "data.image_size or train.batch_size, or raise train.accumulation_steps"
        )
    problem = batch_pixels_problem(t.eval_batch_size, size, train=False)
    if problem:
        return (
            f"train.eval_batch_size={t.eval_batch_size} with data.image_size={size}: {problem}; "
            "lower train.eval_batch_size"
        )
    return None


RELATIONS: list[Callable[[Any], str | None]] = [
    _three_channels,
    _backbone_kwargs_sizes,
    _d_model_divisible,
    _dual_needs_two,
    _accumulation_divides_batch,
    _batch_memory,
    _csv_needs_root,
    _threads,
]


def lookup(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def problems(cfg: Any) -> list[str]:
    """Every broken rule, as `key=value <problem>`, in the table's order, then the relations."""
    found = []
    for key, rule in RULES.items():
        value = lookup(cfg, key)
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if item is None:  # an optional key left unset (e.g. "the same as another key")
                continue
            problem = rule.problem(item)
            if problem:
                where = f"{key}[{i}]" if isinstance(value, list) else key
                why = f" {rule.why}" if getattr(rule, "why", "") else ""
                found.append(f"{where}={short_repr(item)} {problem}{why}")
                break
    if found:
        return found  # the relations assume each value is in its range
    return [p for p in (check(cfg) for check in RELATIONS) if p]


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
