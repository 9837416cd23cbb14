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

from mlic.errors import ConfigError

DatasetName = Literal["coco", "voc"]
HeadName = Literal["gap", "transformer", "dual"]
BatchFormerVariant = Literal["shared", "separate"]
TargetMixing = Literal["area", "union"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

DEFAULT_SPLITS = {
    "coco": {"train": "train2014", "val": "val2014"},
    "voc": {"train": "trainval", "val": "test"},
}


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    dataset: DatasetName = "coco"
    # Folder holding `annotations/` (COCO) or `VOC2007/` (VOC). Empty: the embedded dataset
    # under `embedded_root`, generated on first use.
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
    # Use only the first N images of a split (0: all). For smoke runs and notebook defaults.
    max_train_images: int = 0
    max_val_images: int = 0

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
    batchformer: BatchFormerVariant = "shared"


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
    # lr / (div_factor * final_div_factor). The paper's "initial lr 1e-6" is lr / div_factor.
    lr: float = 1e-4
    div_factor: float = 100.0
    final_div_factor: float = 1e4
    pct_start: float = 0.2
    weight_decay: float = 1e-4
    grad_clip: float = 0.0
    ema_decay: float = 0.9997
    seed: int = 0
    device: str = "auto"
    # Torch's threads on the CPU (an int, or auto: see mlic.cpu). Ignored on a GPU.
    num_threads: int | Literal["auto"] = "auto"
    precision: Precision = "auto"
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"
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
    return yaml.safe_load(text) or {}


def load_config(
    preset: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    path: str | Path | None = None,
) -> Config:
    """A preset (or a resolved config.yaml), then `section.key=value` overrides on top."""
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read configuration ({exc})") from None
        source = str(path)
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
    # YAML parses numbers, booleans and lists ([a, b]) the way a user would type them.
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override key {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def from_dict(raw: dict[str, Any], source: str = "configuration") -> Config:
    """Build a Config, refusing unknown keys and values of the wrong type (naming the key)."""
    return _build(Config, raw, prefix="", source=source)


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'configuration'} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; known keys: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, prefix=f"{key}.", source=source)
        else:
            kwargs[name] = _coerce(value, hint, key, source)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise ConfigError(f"{source}: {exc}") from None


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check (and gently convert) one value; papermill and YAML hand us strings and tuples."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    bad = ConfigError(f"{source}: {key}={value!r} is not a valid {_type_name(hint)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{source}: {key}={value!r} is not one of {', '.join(map(repr, args))}"
            )
        return value
    if origin in (types.UnionType, typing.Union):
        for arg in args:
            try:
                return _coerce(value, arg, key, source)
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
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, bool) or not _is_integral(value):
            raise bad
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    if hint is Any:
        return value
    raise bad  # pragma: no cover


def _is_integral(value: Any) -> bool:
    try:
        return float(value) == int(value)
    except (TypeError, ValueError):
        return False


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def validate(cfg: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    d, m, t = cfg.data, cfg.model, cfg.train
    if d.image_size < 32:
        raise ConfigError(f"data.image_size={d.image_size} is below the backbone's stride 32")
    if len(d.mean) != 3 or len(d.std) != 3:
        raise ConfigError("data.mean and data.std need three values (RGB)")
    if any(s <= 0 for s in d.std):
        raise ConfigError(f"data.std={d.std} must be positive")
    if not 0.0 <= d.cutmix_prob <= 1.0:
        raise ConfigError(f"data.cutmix_prob={d.cutmix_prob} is not in [0, 1]")
    if m.head != "gap" and m.d_model % m.nhead:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.nhead={m.nhead}")
    if t.epochs < 1 or t.batch_size < 1 or t.eval_batch_size < 1:
        raise ConfigError("train.epochs, train.batch_size and train.eval_batch_size must be >= 1")
    if m.head == "dual" and t.batch_size < 2:
        raise ConfigError(
            "train.batch_size must be >= 2 for the dual head: it attends across the batch"
        )
    if not 0.0 < t.pct_start < 1.0:
        raise ConfigError(f"train.pct_start={t.pct_start} is not in (0, 1)")
    if t.num_threads != "auto" and t.num_threads < 1:
        raise ConfigError(f"train.num_threads={t.num_threads} must be >= 1 or auto")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay={t.ema_decay} is not in [0, 1)")
