"""Typed configuration: dataclasses with defaults, presets in YAML, `key=value` overrides.

A run is described entirely by one `Config`; its resolved form (every default written out)
is saved next to every result as `config.yaml`, so a run can be repeated or compared.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from mlic.config_rules import model_problems, problems, short_repr
from mlic.errors import ConfigError
from mlic.safeload import BoundedSafeLoader, load_yaml, parse_yaml

DatasetName = Literal["coco", "voc", "csv"]
# The model's choices, defined here only: mlic.models imports them, and `model_config` checks
# a direct build_model call against them as a configuration is checked.
HeadName = Literal["gap", "transformer", "dual"]
# The dual head's BatchFormerV2 branch; any other head has none (a non-default value there is
# refused: mlic.config_rules).
BatchFormerVariant = Literal["shared", "separate"]
TargetMixing = Literal["area", "union"]
# Which parameters AdamW does not decay: "none" (Query2Label's main_mlc.py: every parameter),
# "norm_bias" (ASL's add_weight_decay: 1-D tensors and biases), "norm_bias_queries" (also the
# learned class queries and other embeddings).
WeightDecayExempt = Literal["none", "norm_bias", "norm_bias_queries"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
CompileSetting = Literal["auto"] | bool
Checkpointing = Literal["none", "backbone", "head", "all"]

DEFAULT_SPLITS = {
    "coco": {"train": "train2014", "val": "val2014"},
    "voc": {"train": "trainval", "val": "test"},
    "csv": {"train": "train", "val": "val"},
}


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    dataset: DatasetName = "coco"
    # Folder holding `annotations/` (COCO), `VOC2007/` (VOC) or `<split>.csv` (csv; format in
    # mlic/data/csv_dataset.py). Empty: the embedded dataset under `embedded_root`, generated
    # on first use.
    root: str = ""
    embedded_root: str = "data/embedded"
    # Empty: the dataset's standard split (COCO train2014/val2014, VOC trainval/test); the
    # embedded dataset uses the same names.
    train_split: str = ""
    val_split: str = ""
    image_size: int = 448
    # The paper normalises with mean 0 / std 1 (§2), i.e. pixels in [0, 1].
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    randaugment: bool = True
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    cutmix_prob: float = 0.5
    cutmix_alpha: float = 1.0
    cutmix_targets: TargetMixing = "area"
    num_workers: int = 8
    # Keep each decoded, resized image in memory after its first use, when its transform has no
    # randomness (no RandAugment in training). For small datasets loaded in the main process
    # (num_workers 0, the embedded preset): decoding and resizing then happen once per run,
    # not once per epoch and evaluation. Each loader worker would hold its own copy.
    cache_images: bool = False
    # Use only the first N images of a split (0: all). For smoke runs and notebook defaults.
    max_train_images: int = 0
    max_val_images: int = 0
    # Per-class thresholds at the end of training are chosen on this fraction of the training
    # split, held out from training (0: chosen on the validation split instead; see
    # mlic/thresholds.py for why either choice makes F1 on the choosing split optimistic).
    calibration_fraction: float = 0.0

    def resolved_root(self) -> Path:
        if self.root:
            return Path(self.root)
        return Path(self.embedded_root) / self.dataset

    @property
    def is_embedded(self) -> bool:
        return not self.root

    def split(self, which: Literal["train", "val"]) -> str:
        chosen = self.train_split if which == "train" else self.val_split
        return chosen or DEFAULT_SPLITS[self.dataset][which]


@dataclass
class ModelConfig:
    """The architecture: backbone, head and head options (see `mlic.build_model`)."""

    backbone: str = "resnest101e"
    head: HeadName = "dual"
    pretrained: bool = True
    # A local weight file for the backbone (ImageNet weights without a network).
    pretrained_file: str = ""
    # Keyword arguments for timm.create_model of the backbone (e.g. narrower channels for CPU presets).
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    d_model: int = 2048
    nhead: int = 4
    num_encoder_layers: int = 1
    num_decoder_layers: int = 2
    dim_feedforward: int = 8192
    dropout: float = 0.1
    # Dual head only. "separate": the official BatchFormerV2 layer of its own (default);
    # "shared": encoder layer 0's weights applied a second time along the batch
    # (docs/deviations.md).
    batchformer: BatchFormerVariant = "separate"


@dataclass
class LossConfig:
    """Asymmetric loss (ASL) hyper-parameters; defaults from the ASL training scripts."""

    gamma_neg: float = 4.0
    gamma_pos: float = 0.0
    clip: float = 0.05
    eps: float = 1e-8


@dataclass
class TrainConfig:
    """Optimisation, schedule and hardware settings."""

    epochs: int = 25
    batch_size: int = 64
    eval_batch_size: int = 128
    # OneCycle: starts at lr / div_factor, peaks at lr after pct_start of the steps, ends at
    # lr / (div_factor * final_div_factor). The paper's "initial lr 1e-6" is read as lr /
    # div_factor (our reading: 1e-4 / 100; Query2Label and ASL keep OneCycle's default 25).
    lr: float = 1e-4
    div_factor: float = 100.0
    final_div_factor: float = 1e4
    pct_start: float = 0.2
    weight_decay: float = 1e-4
    weight_decay_exempt: WeightDecayExempt = "norm_bias_queries"
    # Weight decay of the BatchFormerV2 layer (model.batchformer=separate) alone; None: the same
    # as weight_decay. The official BatchFormerV2 code gives that layer a parameter group of its
    # own with `--bt_decay` (1e-4), whatever the other parameters get; the paper presets follow it.
    batchformer_weight_decay: float | None = None
    grad_clip: float = 0.0
    ema_decay: float = 0.9997
    seed: int = 0
    device: str = "auto"
    # Torch's threads on the CPU (an int, or auto: see mlic.cpu). Ignored on a GPU.
    num_threads: int | Literal["auto"] = "auto"
    precision: Precision = "auto"
    channels_last: bool = True
    # torch.compile of the training and evaluation forward passes. "auto": on CUDA (measured
    # 1.7x the eager step on an H200), off on the CPU; a compile failure falls back to eager.
    compile: CompileSetting = "auto"
    compile_mode: str = "default"
    # Memory for compute: recompute activations in backward instead of keeping them (timm's
    # set_grad_checkpointing for the backbone; torch.utils.checkpoint per head layer).
    activation_checkpointing: Checkpointing = "none"
    # Split each optimizer batch into this many micro-batches (forward + backward each, one
    # optimizer/EMA/scheduler step): batch_size, lr and schedule stay as they are, but the
    # dual head's batch attention sees only the micro-batch.
    accumulation_steps: int = 1
    # Record the loss of every iteration in iterations.csv as well as per epoch.
    log_iteration_loss: bool = False
    # Save best.pt whenever the reported mAP improves.
    save_best: bool = True


@dataclass
class Config:
    """One run."""

    name: str = "run"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- presets

_PRESET_PACKAGE = "mlic.presets"


def preset_names() -> list[str]:
    files = resources.files(_PRESET_PACKAGE).iterdir()
    return sorted(p.name[: -len(".yaml")] for p in files if p.name.endswith(".yaml"))


def preset_summaries() -> dict[str, str]:
    """One line per preset (the `description` in its YAML), for `mlic presets`."""
    return {name: _read_preset(name).get("description", "") for name in preset_names()}


def _read_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    text = resources.files(_PRESET_PACKAGE).joinpath(f"{name}.yaml").read_text()
    raw = parse_yaml(text, f"preset {name}", ConfigError) or {}
    # A preset may say `extends: OTHER` and list only what differs (the memory-limited
    # variants of a paper preset), so a change to the paper preset reaches them too.
    base = raw.pop("extends", None)
    return _merged(_read_preset(base), raw) if base else raw


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both_dicts else value
    return out


def load_config(
    preset: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    path: str | Path | None = None,
) -> Config:
    """A preset (or a resolved config.yaml), then `section.key=value` overrides on top."""
    if path is not None:
        raw = load_yaml(path, ConfigError)
        raw = {} if raw is None else raw
        source = str(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of configuration sections")
    else:
        raw = _read_preset(preset or "embedded")
        source = f"preset {preset or 'embedded'}"
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs = [_split_override(o) for o in overrides or []]
    for key, value in pairs:
        _set_dotted(raw, key, value)
    return from_dict(raw, source=source)


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, value = text.split("=", 1)
    # YAML parses numbers, booleans and lists ([a, b]) the way a user would type them; what does
    # not parse (or uses an alias) stays a string, which the type check then names.
    try:
        parsed = yaml.load(value, Loader=BoundedSafeLoader) if value != "" else ""  # noqa: S506
    except (yaml.YAMLError, RecursionError):
        parsed = value
    return key.strip(), parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node, dict):
            raise ConfigError(f"override key {key!r}: {part!r} is not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override key {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def from_dict(raw: dict[str, Any], source: str = "configuration") -> Config:
    """Build a Config, refusing unknown keys and values of the wrong type (naming the key)."""
    try:
        return _build(Config, raw, prefix="")
    except ConfigError as exc:  # say where the values came from
        raise ConfigError(f"{source}: {exc}") from None


def model_config(**values: Any) -> ModelConfig:
    """The `model` section from keyword arguments, checked by the code that checks a Config's:
    types and choices as `from_dict` reads them, then `mlic.config_rules.model_problems`.

    `mlic.models.build_model` calls it, so a direct call is refused with the same one-line
    error (naming the `model.*` key) as a configuration holding the same values."""
    model = _build(ModelConfig, values, prefix="model.")
    found = model_problems(model)
    if found:
        raise ConfigError(found[0])
    return model


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'configuration'} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in raw if k not in known), key=str)
    if unknown:
        raise ConfigError(
            f"unknown key {short_repr(prefix + str(unknown[0]))}; "
            f"known keys: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, prefix=f"{key}.")
        else:
            kwargs[name] = _coerce(value, hint, key)
    try:
        return cls(**kwargs)  # Config.__post_init__ validates (a ConfigError passes through)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise ConfigError(str(exc)) from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check (and gently convert) one value; papermill and YAML hand us strings and tuples."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    bad = ConfigError(f"{key}={short_repr(value)} is not a valid {_type_name(hint)}")
    if origin is Literal:
        if not isinstance(value, str | int | float | bool | None) or value not in args:
            raise ConfigError(
                f"{key}={short_repr(value)} is not one of {', '.join(map(repr, args))}"
            )
        return value
    if origin in (types.UnionType, typing.Union):
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise bad
    if hint is type(None):
        if value is None:
            return None
        raise bad
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, bool) or not _is_integral(value):
            raise bad
        return value if isinstance(value, int) else int(float(value))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    if hint is Any:
        return value
    raise bad  # pragma: no cover


def _is_integral(value: Any) -> bool:
    if isinstance(value, int):
        return True
    if not isinstance(value, float | str):
        return False
    try:
        return float(value) == int(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):  # e.g. train.compile: "auto" or a bool
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def validate(cfg: Config) -> None:
    """Ranges, choices and relations of the values (`mlic.config_rules`); the first broken rule
    is the error, naming its key and value."""
    found = problems(cfg)
    if found:
        raise ConfigError(found[0])
