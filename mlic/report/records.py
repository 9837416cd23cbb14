"""Reading run records and grouping them by the plan's settings (the seeds of each setting).

A run record is `<runs_dir>/<run>/{config.yaml, metrics.json, history.csv}`. A planned run
without a complete `metrics.json`, or whose configuration is not the plan's (`config_diff`), is
*missing*: its cells stay empty and it is listed, never guessed; a complete record whose
configuration differs is also kept as an `OtherRun`, for the other runs table. A record that does
not parse is a `DataError` naming the file.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlic.errors import ConfigError, DataError, one_line
from mlic.plan import FAMILIES, SETTINGS
from mlic.report.config_diff import Difference, differences, planned_config
from mlic.runrecord import GENERATOR_KEY, read_metrics, stale_data
from mlic.safeload import MAX_TEXT_BYTES, load_yaml, read_bytes

HISTORY_COLUMNS = ("epoch", "train_loss", "map", "map_ema")


@dataclass
class RunRecord:
    """One complete run record: its resolved configuration and final metrics."""

    name: str
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    def get(self, dotted: str) -> Any:
        """A configuration value by dotted key (e.g. "model.backbone"); None when absent."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    @property
    def map(self) -> float:
        """The best epoch's mAP (metrics.json's top level is the best epoch)."""
        return float(self.metrics["map"])

    @property
    def last_map(self) -> float:
        return float(self.metrics["last"]["map"])

    @property
    def seed(self) -> Any:
        return self.get("train.seed")

    def per_class_ap(self, epoch: str = "best") -> dict[str, float]:
        """Per-class AP of the best (top level) or the last epoch ("last")."""
        path = self.path / "metrics.json"
        ap = (self.metrics if epoch == "best" else self.metrics["last"]).get("per_class_ap")
        if not isinstance(ap, dict):
            raise DataError(f"{path}: 'per_class_ap' is missing or not a mapping of class to AP")
        out = {}
        for name, value in ap.items():
            if value is not None and not is_number(value):
                raise DataError(f"{path}: per_class_ap[{name!r}] = {value!r} is not a number")
            out[str(name)] = math.nan if value is None else float(value)
        return out

    def history(self) -> pd.DataFrame:
        """history.csv with at least epoch, train_loss, map, map_ema (numbers), by epoch."""
        path = self.path / "history.csv"
        if not path.exists():
            raise DataError(f"{path}: missing (the run's metrics.json says it is complete)")
        try:
            df = pd.read_csv(io.BytesIO(read_bytes(path, MAX_TEXT_BYTES)))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot be read as CSV ({one_line(exc)})") from None
        for column in HISTORY_COLUMNS:
            if column not in df.columns:
                raise DataError(f"{path}: missing column {column!r}")
            try:
                df[column] = pd.to_numeric(df[column])
            except (ValueError, TypeError):
                raise DataError(
                    f"{path}: column {column!r} holds values that are not numbers"
                ) from None
        return df.sort_values("epoch", kind="stable").reset_index(drop=True)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a metric in a record must be."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_run(run_dir: Path) -> tuple[RunRecord | None, str]:
    """(record, "") for a complete run; (None, reason) when it is not complete.

    Raises DataError (naming the file) when a file exists but does not parse.
    """
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        return None, "no metrics.json"
    metrics = read_metrics(run_dir)
    if metrics is None:
        return None, "metrics.json is not marked complete"
    if not is_number(metrics.get("map")):
        raise DataError(f"{metrics_path}: 'map' = {metrics.get('map')!r} is not a number")
    if not all(isinstance(metrics.get(k), dict) for k in ("best", "last")):
        # Written before metrics.json held the best epoch: its top level is the last epoch.
        return None, "metrics.json has no best/last epoch record (an older mlic); train it again"
    for key in ("best", "last"):
        if not is_number(metrics[key].get("map")):
            raise DataError(f"{metrics_path}: '{key}.map' is not a number")
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise DataError(f"{config_path}: missing (metrics.json says the run is complete)")
    config = load_yaml(config_path)  # bounded: no aliases, a size and depth limit; one line
    if not isinstance(config, dict):
        raise DataError(f"{config_path}: expected a mapping of configuration sections")
    record = RunRecord(run_dir.name, run_dir, config, metrics)
    for key in ("data.dataset", "data.image_size", "model.backbone", "model.head"):
        if record.get(key) is None:
            raise DataError(f"{config_path}: missing key {key!r}")
    return record, ""


@dataclass(frozen=True)
class OtherRun:
    """A complete record named after a setting whose configuration is not the plan's (or whose
    name is `<setting>-<tag>`, not a seed's): listed, never averaged into a table."""

    record: RunRecord
    setting: str
    differences: tuple[Difference, ...]


@dataclass
class Collected:
    """The complete records of each setting of the plan, and what is missing or left out."""

    family: str
    records: dict[str, list[RunRecord]] = field(default_factory=dict)  # setting -> records
    missing: dict[str, str] = field(default_factory=dict)  # run name -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # run name -> why it is not used
    other: dict[str, OtherRun] = field(default_factory=dict)  # run name -> how it differs


def collect(runs_dir: Path, family: str) -> Collected:
    """Find the records of every setting of the plan: `<setting>` and `<setting>-seed{k}`; a
    complete `<setting>-<tag>` record is an other run of that setting."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown plan family {family!r}; choose one of: {', '.join(FAMILIES)}")
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise DataError(f"{runs_dir}: no such directory of run records")
    names = sorted(p.name for p in runs_dir.iterdir() if p.is_dir())
    out = Collected(family)
    planned = {s.name: planned_config(s.name, family) for s in SETTINGS}
    seen: set[str] = set()
    for s in SETTINGS:
        pattern = re.compile(rf"{re.escape(s.name)}(-seed\d+)?")
        found = [n for n in names if pattern.fullmatch(n)]
        seen.update(found)
        if not found:
            out.missing[s.name] = "no run directory"
        good: list[RunRecord] = []
        for name in found:
            record, reason = read_run(runs_dir / name)
            if record is not None:
                diffs = differences(
                    record.config, planned[s.name], str(record.path / "config.yaml")
                ) + _data_difference(record)
                if diffs:
                    out.other[name] = OtherRun(record, s.name, diffs)
                    reason = _not_planned(diffs, family)
            if reason:
                out.missing[name] = reason
            elif any(r.seed == record.seed for r in good):
                out.skipped[name] = f"same seed ({record.seed}) as an earlier record of {s.name}"
            else:
                good.append(record)
        out.records[s.name] = good
    for name in names:
        setting = None if name in seen else _tagged_setting(name)
        if setting is not None:
            record, _ = read_run(runs_dir / name)
            if record is not None:  # an unfinished run of another configuration is no result
                source = str(record.path / "config.yaml")
                diffs = differences(record.config, planned[setting], source)
                diffs += _data_difference(record)
                out.other[name] = OtherRun(record, setting, diffs)
    return out


def _data_difference(record: RunRecord) -> tuple[Difference, ...]:
    """An embedded run trained on another generator's images saw other data: not the plan's."""
    stale = stale_data(record.metrics)
    return () if stale is None else (Difference(f"metrics.{GENERATOR_KEY}", *stale),)


def _tagged_setting(name: str) -> str | None:
    """The setting a run named `<setting>-<tag>` belongs to (the longest such name), if any."""
    matches = [s.name for s in SETTINGS if name.startswith(f"{s.name}-")]
    return max(matches, key=len) if matches else None


def _not_planned(diffs: tuple[Difference, ...], family: str) -> str:
    more = (
        f" and {len(diffs) - 1} more key{'s' if len(diffs) > 2 else ''}" if len(diffs) > 1 else ""
    )
    return f"not the {family} plan's configuration, {diffs[0]}{more}, see the other runs table"
