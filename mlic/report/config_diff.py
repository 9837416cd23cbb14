"""Is a record one of the plan's runs? Its whole configuration against the plan's, key by key.

A record is averaged into a table row only when its resolved configuration equals the one the
plan gives its setting in every key but those in `IGNORED`. The record's config.yaml is read as
the present code reads it (`mlic.config.from_dict`; `mlic reproduce` reads it the same way before
it skips a run): a key added since the record was written takes its default, which keeps the
old behaviour, instead of making every record another configuration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlic import pretext
from mlic.config import Config, from_dict, load_config
from mlic.errors import ConfigError, one_line
from mlic.plan import TABLES, pretext_run_for, runs

# Keys in which a run may differ from the plan and still be a seed of the plan's configuration:
# the seed itself, the run's name, and what only decides where, how fast or how visibly the same
# computation runs. Everything else (epochs, sizes, weights, precision, augmentation, batch,
# accumulation, evaluation batch, data folders) makes it another configuration.
IGNORED = frozenset(
    {
        "name",  # the run directory's name: a seed's is <setting>-seed<k>
        "description",  # the preset's free text
        "train.seed",  # what tells the seeds of a setting apart
        "train.device",  # where it ran (auto, cpu, cuda:N)
        "train.num_threads",  # torch's CPU threads
        "data.num_workers",  # loader processes
        "data.cache_images",  # decode once or every epoch: the same pixels
        "train.compile",  # torch.compile or eager: the same model
        "train.compile_mode",
        "train.channels_last",  # memory layout
        "train.activation_checkpointing",  # recompute instead of keep: memory for time
        "train.log_iteration_loss",  # logging only
        "train.save_best",  # whether best.pt is kept on disk
    }
)


@dataclass(frozen=True)
class Loose:
    """A planned value that depends on where the run was made: `text` shows it, `matches` tests
    a recorded value against it."""

    text: str
    matches: Callable[[Any], bool]


@dataclass(frozen=True)
class Difference:
    """One key in which a record is not the plan's run."""

    key: str
    recorded: Any
    planned: Any  # a value, or a Loose

    def __str__(self) -> str:
        return f"{self.key}: {show(self.recorded)} (plan: {show(self.planned)})"


def show(value: Any) -> str:
    """A configuration value in a table cell: strings quoted, so that '' shows."""
    if isinstance(value, Loose):
        return value.text
    return repr(value) if isinstance(value, str) else str(value)


def flat(cfg: Config) -> dict[str, Any]:
    """{"section.key": value}, in the configuration's order (a dict value stays one value)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in dataclasses.asdict(value).items()})
        else:
            out[f.name] = value
    return out


def planned_config(setting_name: str, family: str) -> dict[str, Any]:
    """The flat configuration the plan gives `setting_name` in `family`, as `mlic reproduce`
    trains it: the preset, the plan's overrides, and the two values reproduce adds that depend
    on the machine (so they are `Loose`)."""
    run = next(r for r in runs(family, only=TABLES) if r.setting == setting_name)
    out = flat(load_config(run.preset, run.overrides))
    if family == "paper":  # the data folder is the user's --data-root (DIR/coco, DIR/voc)
        out["data.root"] = Loose("a data folder (--data-root)", bool)
    weights_of = pretext_run_for(run)
    if weights_of:
        # The backbone of the family's pretext run, wherever the results folder is (a copy, a
        # temporary folder): compared by <runs>/<pretext run>/checkpoints/backbone.pt.
        tail = pretext.weights_path(Path("runs") / weights_of).parts
        out["model.pretrained_file"] = Loose(
            f"'<results>/{'/'.join(tail)}'",
            lambda v: isinstance(v, str) and bool(v) and Path(v).parts[-len(tail) :] == tail,
        )
    return out


def differences(
    config: dict[str, Any], planned: dict[str, Any], source: str
) -> tuple[Difference, ...]:
    """The keys outside IGNORED in which the raw record `config` (from `source`) differs from
    the flat `planned` configuration, in the configuration's order. A record the present code
    refuses is one difference, named "config.yaml"."""
    try:
        recorded = flat(from_dict(config, source=source))
    except ConfigError as exc:
        return (Difference("config.yaml", f"refused: {one_line(exc)}", "a valid configuration"),)
    out = []
    for key, want in planned.items():
        got = recorded.get(key)
        same = want.matches(got) if isinstance(want, Loose) else got == want
        if key not in IGNORED and not same:
            out.append(Difference(key, got, want))
    return tuple(out)
