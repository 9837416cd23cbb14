"""What each configuration value may be: one table of ranges, lists of relations between keys.

The choices of a key are its `Literal` type in `mlic.config` (checked when a value is read);
everything else is here. `mlic.config.validate` applies the rules to every `Config`, whatever
it came from (a preset, a config.yaml, `--set`, a checkpoint, a notebook), and
`mlic.models.build_model` applies the `model.*` ones (`model_problems`, through
`mlic.config.model_config`) to its keyword arguments, so a direct call is refused by the same
code with the same message and no out-of-range value reaches torch, timm or the data loaders.
A new numeric key gets a line in `RULES` (a test checks that every int/float key has one); a
check between keys goes into `MODEL_RELATIONS` (model keys only) or `RELATIONS`.

Upper bounds exist for every size that allocates memory, so a typo cannot grow the process
until the kernel kills it; each says its limit in the error.
"""

from __future__ import annotations

import dataclasses
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
# Heads of the "separate" BatchFormerV2 layer: the official code's
# TransformerEncoderLayer(d_model, 4, d_model, dropout=0.5); mlic.models.transformer builds it.
BATCHFORMER_LAYER_HEADS = 4


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
    # 0 is a working head for "transformer" (the decoder's queries attend to the projected
    # backbone tokens directly; it trains every parameter); the dual head needs 1
    # (MODEL_RELATIONS).
    "model.num_encoder_layers": Range(0, 64),
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


def _branch_follows_encoder_layer_0(m: Any) -> str | None:
    if m.head == "dual" and m.num_encoder_layers < 1:
        return (
            f"model.num_encoder_layers={m.num_encoder_layers}: the dual head needs >= 1 "
            "(its BatchFormerV2 branch follows encoder layer 0)"
        )
    return None


def _d_model_splits(m: Any) -> str | None:
    """The Transformer's width must split into its attention heads and the sine positions."""
    if m.head == "gap":  # no Transformer: the width options are not used
        return None
    if m.d_model % m.nhead:
        return f"model.d_model={m.d_model} is not divisible by model.nhead={m.nhead}"
    if m.d_model % 2:
        return (
            f"model.d_model={m.d_model} must be even: the sine positions give half of it to "
            "the row, half to the column"
        )
    if m.head == "dual" and m.batchformer == "separate" and m.d_model % BATCHFORMER_LAYER_HEADS:
        return (
            f"model.d_model={m.d_model} must be divisible by {BATCHFORMER_LAYER_HEADS}: the "
            f"separate BatchFormerV2 layer has {BATCHFORMER_LAYER_HEADS} heads (official code)"
        )
    return None


def _batchformer_needs_dual(m: Any) -> str | None:
    """`batchformer` picks the dual head's branch: any other head has none, so a non-default
    value there would be silently ignored. Refused rather than warned about: a resolved
    config.yaml then never records a choice that had no effect. (Changing the keys to
    head: gap|query + batchformer: none|shared|separate would say this by construction, but
    would rewrite every committed run record, checkpoint `arch` and the plan.)"""
    default = next(f.default for f in dataclasses.fields(m) if f.name == "batchformer")
    if m.head != "dual" and m.batchformer != default:
        return (
            f"model.batchformer={m.batchformer!r} applies to the dual head only; "
            f"model.head={m.head!r} has no BatchFormerV2 branch (set model.head=dual, or leave "
            f"model.batchformer at its default {default!r})"
        )
    return None


def training_batch_minimum(head: str, pooled_batch_norm: bool = False) -> tuple[int, str]:
    """The fewest images a training forward pass accepts, and why (empty when 1).

    The configuration knows the head; whether the backbone batch-normalises a pooled map is
    known once it is built (`MultiLabelClassifier.min_training_batch` passes it in)."""
    if head == "dual":
        return 2, "the dual head attends across the batch (BatchFormerV2)"
    if pooled_batch_norm:
        return 2, "ResNeSt's split attention batch-normalises a pooled 1x1 map"
    return 1, ""


def _micro_batch(cfg: Any) -> str | None:
    t = cfg.train
    if t.batch_size % t.accumulation_steps:
        return (
            f"train.accumulation_steps={t.accumulation_steps} must divide "
            f"train.batch_size={t.batch_size}"
        )
    micro = t.batch_size // t.accumulation_steps
    need, why = training_batch_minimum(cfg.model.head)
    if micro >= need:
        return None
    if t.accumulation_steps == 1:
        return f"train.batch_size={t.batch_size} must be >= {need}: {why}"
    return (
        f"train.accumulation_steps={t.accumulation_steps} leaves micro-batches of {micro} "
        f"image, each needs >= {need}: {why}"
    )


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


def _backbone_kwargs_sizes(m: Any) -> str | None:
    """timm allocates whatever widths backbone_kwargs asks for: bound every number in it."""
    stack = [m.backbone_kwargs]
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
    # mlic.runtime.make_runtime once it resolves to the CPU.
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


# Relations between `model.*` keys alone: a Config and a direct build_model call both apply them.
MODEL_RELATIONS: list[Callable[[Any], str | None]] = [
    _backbone_kwargs_sizes,
    _branch_follows_encoder_layer_0,
    _d_model_splits,
    _batchformer_needs_dual,
]

RELATIONS: list[Callable[[Any], str | None]] = [
    _three_channels,
    _micro_batch,
    _batch_memory,
    _csv_needs_root,
    _threads,
]

_MODEL = "model."


def lookup(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _range_problems(root: Any, keys: list[str], strip: str = "") -> list[str]:
    """`key=value <problem>` for each key of `RULES` listed, looked up below `root`."""
    found = []
    for key in keys:
        rule = RULES[key]
        value = lookup(root, key.removeprefix(strip))
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if item is None:  # an optional key left unset (e.g. "the same as another key")
                continue
            problem = rule.problem(item)
            if problem:
                where = f"{key}[{i}]" if isinstance(value, list) else key
                why = f" {rule.why}" if getattr(rule, "why", "") else ""
                found.append(f"{where}={short_repr(item)} {problem}{why}")
                break
    return found


def model_problems(model: Any) -> list[str]:
    """Every broken `model.*` rule of a `ModelConfig`: its ranges, then `MODEL_RELATIONS`."""
    found = _range_problems(model, [k for k in RULES if k.startswith(_MODEL)], strip=_MODEL)
    if found:
        return found  # the relations assume each value is in its range
    return [p for p in (check(model) for check in MODEL_RELATIONS) if p]


def problems(cfg: Any) -> list[str]:
    """Every broken rule, as `key=value <problem>`: the ranges of the other sections, the model
    section's rules (`model_problems`), then the relations between sections."""
    found = _range_problems(cfg, [k for k in RULES if not k.startswith(_MODEL)])
    found += model_problems(cfg.model)
    if found:
        return found  # the relations assume each value is in its range
    return [p for p in (check(cfg) for check in RELATIONS) if p]


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
