"""The plan of runs behind the paper's Tables 1-4 and Figures 5-6, as data.

Each planned run is a base preset plus `section.key=value` overrides (for `load_config`) and the
table cells and figures it feeds. Two families:

- `paper`: the paper's configurations on COCO 2014 / VOC 2007 (GPU): ResNet-101 against
  ResNeSt-101e, 448 and 576 px (presets paper-coco-448, paper-coco-576, paper-voc-448).
- `embedded`: the same configurations scaled down for 2 CPU cores on the generated dataset:
  a ResNet and a ResNeSt of equal depth (14 layers) and smaller inputs in the paper's
  448 : 576 = 7 : 9 ratio (preset embedded, which also sets the smaller d_model).

The sizes and backbones live in `FAMILIES`, the one place to tune them. The report
(`mlic.report`) reads run records by the names made here; `mlic reproduce` runs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlic.config import BatchFormerVariant, HeadName, load_config
from mlic.errors import ConfigError
from mlic.pretext import overrides, run_name

# "budget": Table 6 (beyond the paper), two of Table 4's settings trained again at twice the
# epochs, so the report can say whether the plan's budget decides its verdicts.
TABLES = ("table1", "table2", "table3", "table4", "figures", "budget")
# What a plain `mlic reproduce` trains: the paper's tables and figures.
DEFAULT_TABLES = tuple(t for t in TABLES if t != "budget")


@dataclass(frozen=True)
class Family:
    """How one family realises the paper's settings: backbones, sizes and base presets."""

    backbones: dict[str, str]  # "resnet" / "resnest" -> timm model name
    image_sizes: dict[int, int]  # the paper's size (448, 576) -> this family's size in px
    presets: dict[str, str]  # "coco448" / "coco576" / "voc448" -> base preset
    # Pretrain each backbone on the embedded pretext tree first (`mlic.pretext`), the stand-in
    # for ImageNet weights; False: the presets' own (timm's ImageNet) weights.
    pretext: bool = False


FAMILIES: dict[str, Family] = {
    "paper": Family(
        backbones={"resnet": "resnet101", "resnest": "resnest101e"},
        image_sizes={448: 448, 576: 576},
        presets={
            "coco448": "paper-coco-448",
            "coco576": "paper-coco-576",
            "voc448": "paper-voc-448",
        },
    ),
    # resnet14t / resnest14d: the same depth (deep stem + one bottleneck in each of 4 stages;
    # timm calls both "14"). 56 : 72 = 448 : 576 = 7 : 9; at the embedded preset's output
    # stride 16 that is 4x4 and 5x5 tokens (448 / 576 give 14x14 and 18x18 at stride 32).
    "embedded": Family(
        backbones={"resnet": "resnet14t", "resnest": "resnest14d"},
        image_sizes={448: 56, 576: 72},
        presets={"coco448": "embedded", "coco576": "embedded", "voc448": "embedded"},
        pretext=True,
    ),
}


@dataclass(frozen=True)
class Feed:
    """One cell (or figure) a run feeds: `table` in TABLES, `cell` a row/column key of it."""

    table: str
    cell: str  # Table 1/2: paper row key (mlic.paper); Table 3: method key; Table 4: column key


@dataclass(frozen=True)
class Setting:
    """One configuration of the plan, before the family and the seeds are applied."""

    name: str  # e.g. "coco448-resnest-dual"
    dataset: str  # "coco" | "voc"
    paper_size: int  # 448 | 576: the paper's resolution
    backbone: str  # "resnet" | "resnest"
    head: HeadName
    feeds: tuple[Feed, ...]
    # The dual head's BatchFormerV2 branch: "separate" (the official layer, the presets'
    # default) or "shared" (encoder layer 0's weights reused; the paper's other reading).
    batchformer: BatchFormerVariant = "separate"
    # Train for this many times the preset's epochs (Table 6's runs at twice the budget).
    epochs_factor: int = 1


SETTINGS: tuple[Setting, ...] = (
    Setting("coco448-resnet-gap", "coco", 448, "resnet", "gap", (Feed("table1", "resnet101"),)),
    Setting(
        "coco448-resnet-transformer",
        "coco",
        448,
        "resnet",
        "transformer",
        (Feed("table1", "q2l-r101"), Feed("table4", "resnet-transformer")),
    ),
    Setting(
        "coco448-resnest-transformer",
        "coco",
        448,
        "resnest",
        "transformer",
        (Feed("table4", "resnest-transformer"),),
    ),
    Setting("coco448-resnet-dual", "coco", 448, "resnet", "dual", (Feed("table4", "resnet-dual"),)),
    Setting(
        "coco448-resnest-dual",
        "coco",
        448,
        "resnest",
        "dual",
        (
            Feed("table1", "ours"),
            Feed("table4", "resnest-dual"),
            Feed("figures", "figure5"),
            Feed("figures", "figure6"),
        ),
    ),
    Setting(
        "coco576-resnet-transformer",
        "coco",
        576,
        "resnet",
        "transformer",
        (Feed("table2", "q2l-r101"),),
    ),
    Setting("coco576-resnest-dual", "coco", 576, "resnest", "dual", (Feed("table2", "ours"),)),
    # Beyond the paper: Table 4's last column with the other reading of the BatchFormerV2 branch,
    # so the table shows whether the choice matters.
    Setting(
        "coco448-resnest-dual-shared",
        "coco",
        448,
        "resnest",
        "dual",
        (Feed("table4", "resnest-dual-shared"),),
        batchformer="shared",
    ),
    Setting("voc448-resnet-gap", "voc", 448, "resnet", "gap", (Feed("table3", "resnet101"),)),
    Setting("voc448-resnest-dual", "voc", 448, "resnest", "dual", (Feed("table3", "ours"),)),
    # Beyond the paper: "Ours" and "ResNet + Transformer" at twice the epochs (Table 6), the
    # check that the plan's budget is long enough for Table 4b's verdict on them.
    Setting(
        "coco448-resnest-dual-2x",
        "coco",
        448,
        "resnest",
        "dual",
        (Feed("budget", "resnest-dual"),),
        epochs_factor=2,
    ),
    Setting(
        "coco448-resnet-transformer-2x",
        "coco",
        448,
        "resnet",
        "transformer",
        (Feed("budget", "resnet-transformer"),),
        epochs_factor=2,
    ),
)


# The embedded runs whose best checkpoint is committed (a few MB each), so a fresh clone can
# predict, evaluate, calibrate and export them: the walkthrough's and the README's run and the
# seeds of Table 1's headline row ("Ours"). .gitignore lets exactly these best.pt files in.
SHIPPED_WEIGHTS: tuple[str, ...] = (
    "coco448-resnest-dual",
    "coco448-resnest-dual-seed1",
    "coco448-resnest-dual-seed2",
)


@dataclass(frozen=True)
class PlannedRun:
    """One run to make: `load_config(preset, overrides)` gives its configuration."""

    name: str  # run directory name: the setting's name, plus "-seed{k}" for seeds k >= 1
    setting: str  # the setting's name (runs of one setting differ only in the seed)
    family: str
    preset: str
    overrides: dict[str, Any] = field(hash=False)  # built-in types only (papermill-safe)
    feeds: tuple[Feed, ...] = ()
    seed: int | None = None  # None: the preset's seed

    def override_strings(self) -> list[str]:
        """The overrides as `key=value` strings, for `mlic train --set ...`."""
        return [f"{key}={value}" for key, value in self.overrides.items()]

    def feeds_table(self, table: str) -> bool:
        return any(f.table == table for f in self.feeds)


def _planned(setting: Setting, family: str, seed: int | None) -> PlannedRun:
    fam = FAMILIES[family]
    # Seed 0 keeps the plain name: it is the run a one-seed reproduction already made.
    name = setting.name if not seed else f"{setting.name}-seed{seed}"
    overrides: dict[str, Any] = {
        "name": name,
        "data.dataset": setting.dataset,
        "data.image_size": fam.image_sizes[setting.paper_size],
        "model.backbone": fam.backbones[setting.backbone],
        "model.head": setting.head,
    }
    if setting.head == "dual":
        overrides["model.batchformer"] = setting.batchformer
    preset = fam.presets[f"{setting.dataset}{setting.paper_size}"]
    if setting.epochs_factor != 1:
        overrides["train.epochs"] = setting.epochs_factor * load_config(preset).train.epochs
    if seed is not None:
        overrides["train.seed"] = seed
    return PlannedRun(name, setting.name, family, preset, overrides, setting.feeds, seed)


def runs(family: str, seeds: int = 1, only: str | Iterable[str] | None = None) -> list[PlannedRun]:
    """The plan's runs for `family`, in the plan's order.

    seeds > 1 repeats every setting with `train.seed` = 0 .. seeds-1; seed 0 is the plain run
    (so `--seeds 3` after a one-seed reproduction trains only seeds 1 and 2), the others' names
    end in -seed{k};
    `only` keeps the runs feeding the named tables ("table1".."table4", "figures", "budget");
    None: DEFAULT_TABLES (the budget runs are trained only when asked for).
    """
    if family not in FAMILIES:
        raise ConfigError(f"unknown plan family {family!r}; choose one of: {', '.join(FAMILIES)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds={seeds!r} must be a positive integer")
    wanted = _tables(only)
    chosen = [s for s in SETTINGS if any(f.table in wanted for f in s.feeds)]
    seed_list: list[int | None] = [None] if seeds == 1 else list(range(seeds))
    return [_planned(s, family, seed) for s in chosen for seed in seed_list]


def pretext_runs(family: str, needed: Iterable[PlannedRun] | None = None) -> list[PlannedRun]:
    """The pretext runs that pretrain the family's backbones (none for the paper family): one
    per backbone, or per backbone that a run in `needed` uses. At the 448 size (the paper's
    ImageNet weights serve both of its sizes too)."""
    fam = FAMILIES[family]
    if not fam.pretext:
        return []
    keys = list(fam.backbones)
    if needed is not None:
        used = {setting(r.setting).backbone for r in needed}
        keys = [k for k in keys if k in used]
    root = load_config(fam.presets["coco448"]).data.embedded_root
    out = []
    for key in keys:
        name = run_name(key)
        ovr = {"name": name, **overrides(fam.backbones[key], fam.image_sizes[448], root)}
        out.append(PlannedRun(name, name, family, fam.presets["coco448"], ovr))
    return out


def pretext_run_for(run: PlannedRun) -> str | None:
    """The name of the pretext run whose backbone `run` loads (None: no pretext family)."""
    if not FAMILIES[run.family].pretext:
        return None
    return run_name(setting(run.setting).backbone)


def _tables(only: str | Iterable[str] | None) -> set[str]:
    if only is None:
        return set(DEFAULT_TABLES)
    names = {only} if isinstance(only, str) else set(only)
    unknown = sorted(names - set(TABLES))
    if unknown:
        raise ConfigError(
            f"unknown table {unknown[0]!r} in --only; choose from: {', '.join(TABLES)}"
        )
    return names


def setting(name: str) -> Setting:
    """The setting called `name` (a run name with or without its -seed{k} suffix)."""
    base = re.sub(r"-seed\d+$", "", name)
    for s in SETTINGS:
        if s.name == base:
            return s
    raise ConfigError(
        f"{name!r} is not a run of the plan; runs: {', '.join(s.name for s in SETTINGS)}"
    )


def expected_config(setting_name: str, family: str) -> dict[str, Any]:
    """The configuration values a record of this setting must show (dotted keys), seed aside."""
    planned = _planned(setting(setting_name), family, None)
    return {k: v for k, v in planned.overrides.items() if k != "name"}
