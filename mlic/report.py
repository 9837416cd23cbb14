"""Tables 1-4 (with 4b, effects over seeds, and 5, AP by object size; Markdown + CSV) and
Figures 5-6 (PNG) from run records alone.

Data flows one way: this module reads `<runs_dir>/<run>/{config.yaml, metrics.json,
history.csv}` (DESIGN.md, "A run record"), the paper's numbers (`mlic.paper`) and the plan
(`mlic.plan`); it never imports the engine. Output is deterministic - rows in the paper's
order, fixed float formats, PNGs without a software tag at a fixed size and dpi - so deleting
the outputs and building again gives byte-identical files.

A planned run without a complete `metrics.json` (or whose `config.yaml` is not the planned
configuration of the family) is *missing*: its cells stay empty and it is listed, never
guessed. A record that does not parse is a `DataError` naming the file.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlic import paper, pretext
from mlic.convergence import THRESHOLD as CONVERGENCE_THRESHOLD
from mlic.convergence import last_quarter_gain
from mlic.errors import ConfigError, DataError, one_line
from mlic.plan import FAMILIES, SETTINGS, expected_config
from mlic.runrecord import atomic_write_bytes, read_metrics
from mlic.safeload import MAX_TEXT_BYTES, load_json, load_yaml, read_bytes

DATASET_NAMES = {"coco": "COCO 2014", "voc": "VOC 2007"}
HISTORY_COLUMNS = ("epoch", "train_loss", "map", "map_ema")
OURS = "coco448-resnest-dual"  # the run behind Figures 5 and 6
FIGURE_SIZE = (6.4, 4.0)  # inches
FIGURE_DPI = 100
PAPER, THIS = "paper", "this replication"
# This replication's numbers are those of the best epoch of max(model, EMA), as Query2Label
# (main_mlc.py) and ASL (train.py) report; the CSVs add the last epoch (a column of its own).
BEST, LAST = f"{THIS}, best epoch", f"{THIS}, last epoch"
EPOCH_NOTE = (
    "This replication: the best epoch of max(model, EMA) mAP of each run, as Query2Label and ASL "
    "report it; the CSV also gives the last epoch."
)


# --------------------------------------------------------------------------- reading records


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
            if value is not None and not _is_number(value):
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


def _is_number(value: Any) -> bool:
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
    if not _is_number(metrics.get("map")):
        raise DataError(f"{metrics_path}: 'map' = {metrics.get('map')!r} is not a number")
    if not all(isinstance(metrics.get(k), dict) for k in ("best", "last")):
        # Written before metrics.json held the best epoch: its top level is the last epoch.
        return None, "metrics.json has no best/last epoch record (an older mlic); train it again"
    for key in ("best", "last"):
        if not _is_number(metrics[key].get("map")):
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


@dataclass
class Collected:
    """The complete records of each setting of the plan, and what is missing or left out."""

    family: str
    records: dict[str, list[RunRecord]] = field(default_factory=dict)  # setting -> records
    missing: dict[str, str] = field(default_factory=dict)  # run name -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # run name -> why it is not used


def collect(runs_dir: Path, family: str) -> Collected:
    """Find the records of every setting of the plan: `<setting>` and `<setting>-seed{k}`."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown plan family {family!r}; choose one of: {', '.join(FAMILIES)}")
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise DataError(f"{runs_dir}: no such directory of run records")
    names = sorted(p.name for p in runs_dir.iterdir() if p.is_dir())
    out = Collected(family)
    for s in SETTINGS:
        pattern = re.compile(rf"{re.escape(s.name)}(-seed\d+)?")
        found = [n for n in names if pattern.fullmatch(n)]
        if not found:
            out.missing[s.name] = "no run directory"
        good: list[RunRecord] = []
        for name in found:
            record, reason = read_run(runs_dir / name)
            if record is not None:
                reason = _mismatch(record, s.name, family)
            if reason:
                out.missing[name] = reason
            elif any(r.seed == record.seed for r in good):
                out.skipped[name] = f"same seed ({record.seed}) as an earlier record of {s.name}"
            else:
                good.append(record)
        out.records[s.name] = good
    return out


def _mismatch(record: RunRecord, setting_name: str, family: str) -> str:
    """Why a record is not the plan's run for this family ("" when it is)."""
    for key, want in expected_config(setting_name, family).items():
        got = record.get(key)
        if got != want:
            return f"config.yaml has {key}={got!r}, the {family} plan has {want!r}"
    root = record.get("data.root")
    if (not root) != (family == "embedded"):  # an empty data.root means the embedded dataset
        where = f"data root {root!r}" if root else "the embedded dataset"
        return f"config.yaml trains on {where}, not on the {family} family's data"
    return ""


# --------------------------------------------------------------------------- numbers and cells


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample std over seeds; NaN for fewer than two
    n: int
    runs: str  # the run names it comes from

    @staticmethod
    def of(values: list[float], names: list[str]) -> Summary:
        s = pd.Series(values, dtype=float).dropna()
        n = len(s)
        mean = float(s.mean()) if n else math.nan
        std = float(s.std(ddof=1)) if n > 1 else math.nan
        return Summary(mean, std, n, ", ".join(sorted(names)))


def _summary(records: list[RunRecord], value: Callable[[RunRecord], float]) -> Summary:
    return Summary.of([value(r) for r in records], [r.name for r in records])


def _cell(s: Summary) -> str:
    if s.n == 0 or math.isnan(s.mean):
        return ""
    if s.n == 1:
        return f"{s.mean:.2f}"
    return f"{s.mean:.2f} ± {s.std:.2f} (n={s.n})"


def _signed(x: float) -> str:
    return "" if math.isnan(x) else f"{x:+.2f}"


def _diff(a: float, b: float) -> float:
    return a - b if not (math.isnan(a) or math.isnan(b)) else math.nan


# --------------------------------------------------------------------------- captions


def _start_weights(record: RunRecord) -> str:
    """Where a run's backbone weights came from, in a caption's words."""
    file = record.get("model.pretrained_file")
    if file:
        parent = Path(str(file)).parent.parent.name  # <run>/checkpoints/backbone.pt
        if parent.startswith(pretext.PREFIX):
            return "pretrained on the embedded pretext tree"
        return f"weights from {Path(str(file)).name}"
    return "ImageNet weights" if record.get("model.pretrained") else "from scratch"


def _describe(records: list[RunRecord], family: str, paper_data: str, paper_size: str) -> str:
    """One caption line about this replication's runs, from their config.yaml."""
    if not records:
        return f"This replication: no complete run record yet ({family} family; see Missing)."

    def values(key: str, only: Callable[[RunRecord], bool] = lambda r: True) -> str:
        found = {r.get(key) for r in records if only(r) and r.get(key) is not None}
        try:
            ordered = sorted(found)  # numbers in numeric order
        except TypeError:
            ordered = sorted(found, key=str)
        return ", ".join(str(v) for v in ordered)

    backbones = values("model.backbone")
    sizes = values("data.image_size")
    d_model = values("model.d_model", lambda r: r.get("model.head") != "gap")
    epochs = values("train.epochs")
    starts = ", ".join(sorted({_start_weights(r) for r in records}))
    details = f"backbones {backbones} ({starts}); input {sizes} px (paper: {paper_size})"
    if d_model:
        details += f"; d_model {d_model}"
    if epochs:
        details += f"; {epochs} epochs"
    if all(not r.get("data.root") for r in records):
        return (
            f"This replication: scaled-down runs on the generated embedded dataset, "
            f"not {paper_data} ({details}). Its numbers are not comparable with the paper's "
            "in absolute terms; compare the differences between rows."
        )
    datasets = values("data.dataset")
    splits = sorted({str(r.metrics.get("split")) for r in records if r.metrics.get("split")})
    images = sorted({int(r.metrics["num_images"]) for r in records if r.metrics.get("num_images")})
    where = " / ".join(DATASET_NAMES.get(d, d) for d in datasets.split(", "))
    if splits:
        where += f", split {', '.join(splits)}"
    if images:
        where += f" ({', '.join(f'{i:,}' for i in images)} images)"
    return f"This replication: {where}; {details}."


def _missing_line(collected: Collected, settings: list[str]) -> str:
    items = [
        f"{name} ({reason})"
        for name, reason in sorted(collected.missing.items())
        if re.sub(r"-seed\d+$", "", name) in settings
    ]
    return f"Missing runs: {'; '.join(items)}." if items else ""


# --------------------------------------------------------------------------- tables


def _feeding(table: str) -> dict[str, str]:
    """cell key -> setting name, for the settings feeding `table`."""
    return {f.cell: s.name for s in SETTINGS for f in s.feeds if f.table == table}


def _comparison_table(
    collected: Collected, table: str, rows: tuple[paper.Row, ...], title: str, paper_data: str
) -> pd.DataFrame:
    feeding = _feeding(table)
    out = []
    used: list[RunRecord] = []
    for row in rows:
        records = collected.records.get(feeding.get(row.key, ""), [])
        used += records
        s = _summary(records, lambda r: r.map)
        out.append(
            {
                "Method": row.label,
                "Resolution": f"{row.resolution}×{row.resolution}",
                f"mAP, {PAPER}": row.map.value,
                f"mAP, {BEST}": s.mean,
                "std": s.std,
                "n": s.n,
                f"mAP, {LAST}": _summary(records, lambda r: r.last_map).mean,
                "Difference": _diff(s.mean, row.map.value),
                "Runs": s.runs if row.key in feeding else "not run by this project",
                "_paper_text": row.map.text,
            }
        )
    df = pd.DataFrame(out)
    size = f"{rows[0].resolution} px"
    df.attrs["title"] = title
    df.attrs["summaries"] = {f"mAP, {BEST}": ("std", "n")}
    df.attrs["csv_only"] = [f"mAP, {LAST}"]
    df.attrs["caption"] = _describe(used, collected.family, paper_data, size)
    df.attrs["notes"] = [
        "mAP in %; the paper's numbers from mlic/paper.py "
        f"({rows[0].map.source.split(' (')[0]}). Rows this project does not run keep an "
        "empty cell. Q2L-R101 here is ResNet + Transformer head trained with this recipe. "
        + EPOCH_NOTE
    ]
    df.attrs["missing"] = _missing_line(collected, list(feeding.values()))
    return df


def _voc_row(name: str) -> str | None:
    """The paper's Table 3 row for a class name (devkit name or the paper's abbreviation)."""
    if name in paper.VOC_CLASSES:
        return name
    by_devkit = {v: k for k, v in paper.VOC_CLASSES.items()}
    return by_devkit.get(name)


def _table3(collected: Collected) -> tuple[pd.DataFrame, pd.DataFrame]:
    feeding = _feeding("table3")
    ours = {key: collected.records.get(feeding[key], []) for key in ("resnet101", "ours")}
    labels = {"resnet101": "ResNet-101", "ours": "Ours"}
    per_class = {
        key: [r.per_class_ap() for r in records] for key, records in ours.items()
    }  # key -> list over seeds of {class: AP}
    per_class_last = {key: [r.per_class_ap("last") for r in rs] for key, rs in ours.items()}

    def class_summary(key: str, cls: str, epoch: str = "best") -> Summary:
        aps = per_class[key] if epoch == "best" else per_class_last[key]
        values = [ap.get(cls, math.nan) for ap in aps]
        return Summary.of(values, [r.name for r in ours[key]])

    def last_mean(key: str, cls: str | None) -> float:
        """The last epoch's mean over seeds: mAP (cls None) or one class's AP (CSV only)."""
        if cls is None:
            return _summary(ours[key], lambda r: r.last_map).mean
        return class_summary(key, cls, "last").mean

    # Block 1: the paper's VOC table, this replication's numbers where the classes are VOC's.
    own_names: list[str] = []
    for key in ("resnet101", "ours"):
        for ap in per_class[key]:
            own_names += [n for n in ap if n not in own_names]
    voc_names = {_voc_row(n): n for n in own_names if _voc_row(n)}
    rows = []
    for row in paper.TABLE3:
        out: dict[str, Any] = {"Class": row}
        for key, label, _ in paper.TABLE3_METHODS:
            out[f"{label}, {PAPER}"] = paper.TABLE3[row][key].value
        for key in ("resnet101", "ours"):
            last = math.nan
            if row == "mAP":
                s = _summary(ours[key], lambda r: r.map)
                last = last_mean(key, None)
            elif row in voc_names:
                s = class_summary(key, voc_names[row])
                last = last_mean(key, voc_names[row])
            else:
                s = Summary(math.nan, math.nan, 0, "")
            out[f"{labels[key]}, {BEST}"] = s.mean
            out[f"{labels[key]}, {BEST}, std"] = s.std
            out[f"{labels[key]}, {BEST}, n"] = s.n
            out[f"{labels[key]}, {LAST}"] = last
            out[f"{labels[key]}, difference"] = _diff(s.mean, paper.TABLE3[row][key].value)
        rows.append(out)
    paper_block = pd.DataFrame(rows)
    paper_block.attrs["summaries"] = {
        f"{labels[k]}, {BEST}": (f"{labels[k]}, {BEST}, std", f"{labels[k]}, {BEST}, n")
        for k in ("resnet101", "ours")
    }
    paper_block.attrs["csv_only"] = [f"{labels[k]}, {LAST}" for k in ("resnet101", "ours")]

    # Block 2: this replication's per-class AP under its own class names.
    rows = []
    for cls in [*own_names, "mAP"]:
        out = {"Class": cls}
        means = {}
        for key in ("resnet101", "ours"):
            s = _summary(ours[key], lambda r: r.map) if cls == "mAP" else class_summary(key, cls)
            means[key] = s.mean
            out[f"{labels[key]}, {BEST}"] = s.mean
            out[f"{labels[key]}, {BEST}, std"] = s.std
            out[f"{labels[key]}, {BEST}, n"] = s.n
            out[f"{labels[key]}, {LAST}"] = last_mean(key, None if cls == "mAP" else cls)
        out["Ours - ResNet"] = _diff(means["ours"], means["resnet101"])
        rows.append(out)
    own_block = pd.DataFrame(rows)
    own_block.attrs["summaries"] = paper_block.attrs["summaries"]
    own_block.attrs["csv_only"] = paper_block.attrs["csv_only"]

    used = ours["resnet101"] + ours["ours"]
    embedded = bool(used) and all(not r.get("data.root") for r in used)
    paper_block.attrs["title"] = (
        "Table 3. AP per class (%) on VOC 2007 test at 448×448: the paper's numbers, "
        "with this replication's beside them"
    )
    paper_block.attrs["caption"] = _describe(used, collected.family, "VOC 2007", "448 px")
    paper_block.attrs["notes"] = [
        "The paper's numbers from mlic/paper.py (Table 3). ML-GCN, SSGRL and ASL (TResNetL) "
        "are not run by this project. "
        + (
            "The generated dataset has its own classes, so only the mAP row compares; "
            "its per-class AP is in the second block."
            if embedded
            else "Class rows are filled where this replication's class names are VOC's."
        )
        + " "
        + EPOCH_NOTE
    ]
    paper_block.attrs["missing"] = _missing_line(collected, list(feeding.values()))
    own_block.attrs["title"] = "Table 3 (second block). This replication's AP per class (%)"
    own_block.attrs["caption"] = (
        "Classes of the generated embedded dataset, in its order."
        if embedded
        else "Classes as named in this replication's metrics.json, in its order."
    )
    own_block.attrs["notes"] = []
    own_block.attrs["missing"] = ""
    return paper_block, own_block


def _table4(collected: Collected) -> pd.DataFrame:
    feeding = _feeding("table4")
    rows = []
    used: list[RunRecord] = []
    summaries = {}
    last: dict[str, float] = {}
    # The paper's four columns, then the settings beyond the paper (no paper number).
    beyond = [key for key in feeding if key not in {c.key for c in paper.TABLE4}]
    for key in [c.key for c in paper.TABLE4] + beyond:
        records = collected.records.get(feeding[key], [])
        used += records
        summaries[key] = _summary(records, lambda r: r.map)
        last[key] = _summary(records, lambda r: r.last_map).mean
    base_key = "resnet-transformer"  # the paper's gains in §2.3 are over this column
    base = next(c.map.value for c in paper.TABLE4 if c.key == base_key)
    columns = [(c.key, c.backbone, c.head, c.map.value, c.map.text) for c in paper.TABLE4]
    columns += [(key, *BEYOND_TABLE4[key], math.nan, "") for key in beyond]
    for key, backbone, head, paper_value, paper_text in columns:
        s = summaries[key]
        rows.append(
            {
                "Backbone": "ResNeSt" if backbone == "resnest" else "ResNet",
                "Head": HEAD_LABELS.get(head, head),
                f"mAP, {PAPER}": paper_value,
                f"mAP, {BEST}": s.mean,
                "std": s.std,
                "n": s.n,
                f"mAP, {LAST}": last[key],
                "Difference": _diff(s.mean, paper_value),
                "Gain over ResNet + Transformer (paper)": _diff(paper_value, base),
                "Gain over ResNet + Transformer (this replication)": _diff(
                    s.mean, summaries[base_key].mean
                ),
                "Runs": s.runs,
                "_paper_text": paper_text,
            }
        )
    df = pd.DataFrame(rows)
    df.attrs["summaries"] = {f"mAP, {BEST}": ("std", "n")}
    df.attrs["csv_only"] = [f"mAP, {LAST}"]
    df.attrs["title"] = "Table 4. Ablation on COCO 2014 at 448×448: backbone × head, mAP (%)"
    df.attrs["caption"] = _describe(used, collected.family, "COCO 2014", "448 px")
    df.attrs["notes"] = [
        "The paper's numbers from mlic/paper.py (Table 4; its column 2 lost the ResNeSt check "
        "mark in the text extraction, restored from §2.3). Gains are differences of means. "
        + EPOCH_NOTE,
        "The dual-branch rows use the official BatchFormerV2 layer (model.batchformer: "
        "separate). The last row goes beyond the paper: the same model with the branch reusing "
        "encoder layer 0's weights (shared), the paper's other reading (README, Deviations); "
        "the paper has no number for it.",
        paper.table4_discrepancy_note(),
    ]
    df.attrs["missing"] = _missing_line(collected, list(feeding.values()))
    return df


# Table 4 rows beyond the paper: cell key -> (backbone, head label key).
BEYOND_TABLE4 = {"resnest-dual-shared": ("resnest", "dual-shared")}
HEAD_LABELS = {
    "transformer": "Transformer",
    "dual": "dual-branch Transformer",
    "dual-shared": "dual-branch Transformer, branch sharing encoder layer 0 (beyond the paper)",
}


# Table 4b: each effect of the ablation as (label, run A, run B, A better, B better); an effect
# whose settings are not both in the plan is left out.
EFFECTS = (
    (
        "ResNeSt vs ResNet backbone (Transformer head)",
        "coco448-resnest-transformer",
        "coco448-resnet-transformer",
        "ResNeSt better",
        "ResNet better",
    ),
    (
        "dual-branch vs plain Transformer head (ResNet)",
        "coco448-resnet-dual",
        "coco448-resnet-transformer",
        "dual-branch better",
        "plain Transformer better",
    ),
    (
        "both (ResNeSt + dual) vs neither (ResNet + Transformer)",
        "coco448-resnest-dual",
        "coco448-resnet-transformer",
        "both better",
        "neither better",
    ),
    (
        "separate vs shared BatchFormerV2 encoder (ResNeSt + dual)",
        "coco448-resnest-dual",
        "coco448-resnest-dual-shared",
        "separate better",
        "shared better",
    ),
)


def _planned_effects() -> list[tuple[str, str, str, str, str]]:
    planned = {s.name for s in SETTINGS}
    return [e for e in EFFECTS if e[1] in planned and e[2] in planned]


def _effect_columns(e: Any, better_a: str, better_b: str) -> dict[str, Any]:
    """The cells of one paired effect (mlic.effects.PairedEffect)."""
    from mlic.effects import CONFIDENCE

    ci = f"{CONFIDENCE:.0%} CI"
    return {
        "Mean paired difference, this replication": e.mean,
        f"{ci}, low": e.low,
        f"{ci}, high": e.high,
        ci: "" if math.isnan(e.low) else f"[{e.low:+.2f}, {e.high:+.2f}]",
        "Paired seeds": e.n,
        "Seeds": ", ".join(map(str, e.seeds)),
        "Verdict": e.verdict(better_a, better_b),
    }


def _effect_frame(
    rows: list[dict[str, Any]], title: str, measure: str, notes: list[str]
) -> pd.DataFrame:
    """A table of paired effects; `measure` names what is differenced (for the note)."""
    from mlic.effects import CONFIDENCE

    ci = f"{CONFIDENCE:.0%} CI"
    df = pd.DataFrame(rows)
    df.attrs["csv_only"] = [f"{ci}, low", f"{ci}, high"]  # the Markdown shows "[low, high]"
    df.attrs["markdown_only"] = [ci]
    df.attrs["title"] = title
    df.attrs["notes"] = [
        f"Each difference is run A's {measure} minus run B's, trained with the same seed "
        f"(train.seed in config.yaml); the {ci} is mean ± t(0.975, n-1) · sd / √n over the n "
        "paired seeds (Student's t). An effect is resolved when its CI excludes 0.",
        *notes,
    ]
    return df


def _table4b(collected: Collected) -> pd.DataFrame:
    """Table 4's effects as mean differences paired by seed, with a 95 % CI (mlic.effects)."""
    from mlic.effects import paired_effect

    paper_map = {
        name: next(c.map.value for c in paper.TABLE4 if c.key == key)
        for key, name in _feeding("table4").items()
        if any(c.key == key for c in paper.TABLE4)
    }
    rows, used, unpaired = [], [], []
    for label, a, b, better_a, better_b in _planned_effects():
        by_seed = {
            name: {r.seed: r.map for r in collected.records.get(name, [])} for name in (a, b)
        }
        used += collected.records.get(a, []) + collected.records.get(b, [])
        e = paired_effect(by_seed[a], by_seed[b])
        if e.unpaired:
            unpaired.append(f"{label}: seed {', '.join(map(str, e.unpaired))}")
        rows.append(
            {
                "Effect": label,
                "A vs B": f"{a} vs {b}",
                "Difference, paper": _diff(paper_map.get(a, math.nan), paper_map.get(b, math.nan)),
                **_effect_columns(e, better_a, better_b),
            }
        )
    notes = ["The paper reports one run per configuration: its differences have no interval."]
    if unpaired:
        notes.append(f"Seeds without a partner, left out: {'; '.join(unpaired)}.")
    df = _effect_frame(
        rows,
        "Table 4b. Table 4's effects, paired over seeds: mAP difference (points)",
        "mAP",
        notes,
    )
    df.attrs["caption"] = _describe(used, collected.family, "COCO 2014", "448 px")
    settings = sorted({name for e in _planned_effects() for name in e[1:3]})
    df.attrs["missing"] = _missing_line(collected, settings)
    return df


SIZE_COLUMNS = ("small", "medium", "large")  # keys of metrics.json's map_by_size


def _sizes_of(record: RunRecord) -> tuple[dict[str, float] | None, str]:
    """({bucket: mAP or NaN}, "") from metrics.json's map_by_size; (None, why) without it."""
    path = record.path / "metrics.json"
    block = record.metrics.get("map_by_size")
    if block is None:
        return None, "no map_by_size in metrics.json (written before AP by object size existed)"
    if not isinstance(block, dict):
        raise DataError(f"{path}: 'map_by_size' is not a mapping")
    out = {}
    for bucket in SIZE_COLUMNS:
        entry = block.get(bucket)
        value = entry.get("map") if isinstance(entry, dict) else "missing"
        if value is not None and not _is_number(value):
            raise DataError(f"{path}: map_by_size[{bucket!r}]['map'] = {value!r} is not a number")
        out[bucket] = math.nan if value is None else float(value)
    return out, ""


def _size_rule(records: list[RunRecord]) -> str:
    """The buckets' definition and counts, as the records state them."""
    blocks = [
        r.metrics["map_by_size"] for r in records if isinstance(r.metrics.get("map_by_size"), dict)
    ]
    if not blocks:
        return ""
    first = blocks[0]

    def px2(limit: object) -> str:
        root = math.isqrt(int(limit))  # type: ignore[call-overload]
        return f"{root}² px" if root * root == limit else f"{limit:,} px²"

    try:
        (lo, hi), (w, h) = first["limits_px2"], first["reference_image_px"]
        fractions = [100 * float(f) for f in first["limits_fraction"]]
        rule = (
            "A positive (image, class) falls in the bucket of the class's largest instance in "
            f"that image: small < {px2(lo)}, medium < {px2(hi)}, large otherwise (COCO's "
            f"limits) at a {w}×{h} image, scaled by the image's area (< {fractions[0]:.2f} % "
            f"and < {fractions[1]:.2f} % of the image). In a bucket, positives of the other "
            "buckets are left out, negatives all count."
        )
    except (KeyError, TypeError, ValueError, IndexError):
        rule = "The records' map_by_size lacks its rule (limits_px2, reference_image_px)."

    def count(block: dict, bucket: str | None, key: str) -> int:
        entry = block.get(bucket) if bucket else block
        value = entry.get(key) if isinstance(entry, dict) else None
        return int(value) if _is_number(value) else -1  # -1: the record does not say

    counts = sorted(
        {
            tuple((count(b, k, "num_positives"), count(b, k, "num_classes")) for k in SIZE_COLUMNS)
            + (count(b, None, "num_positives_without_area"),)
            for b in blocks
        }
    )
    described = [
        ", ".join(f"{k} {p:,} ({c})" for k, (p, c) in zip(SIZE_COLUMNS, entry[:3], strict=True))
        + (f", {entry[3]:,} of unknown area" if entry[3] > 0 else "")
        for entry in counts
    ]
    which = "the evaluated split" if len(counts) == 1 else "the runs' splits (they differ)"
    return (
        f"{rule} Positives per bucket (classes with positives) in {which}: {'; '.join(described)}."
    )


def _table5(collected: Collected) -> pd.DataFrame:
    """AP by object size (beyond the paper) for the settings of Table 4, mean over seeds."""
    settings = [s for s in SETTINGS if any(f.table == "table4" for f in s.feeds)]
    rows, used = [], []
    for s in settings:
        records = collected.records.get(s.name, [])
        used += records
        sized, without, reasons = [], [], []
        for r in records:
            values, reason = _sizes_of(r)
            if values is None:
                without.append(r.name)
            else:
                sized.append((r, values))
        if without:
            reasons.append(f"{reason}: {', '.join(without)}")
        out: dict[str, Any] = {
            "Backbone": "ResNeSt" if s.backbone == "resnest" else "ResNet",
            "Head": HEAD_LABELS.get(
                "dual-shared" if s.head == "dual" and s.batchformer == "shared" else s.head, s.head
            ),
            "Setting": s.name,
        }
        for bucket in SIZE_COLUMNS:
            summary = Summary.of([v[bucket] for _, v in sized], [r.name for r, _ in sized])
            out[f"mAP, {bucket}"] = summary.mean
            out[f"{bucket}, std"], out[f"{bucket}, n"] = summary.std, summary.n
            if sized and summary.n == 0:
                reasons.append(f"no positives in the {bucket} bucket")
        whole = _summary([r for r, _ in sized], lambda r: r.map)
        out["mAP, all sizes"], out["all, std"], out["all, n"] = whole.mean, whole.std, whole.n
        out["Runs"] = whole.runs
        out["Note"] = "; ".join(reasons)
        rows.append(out)
    df = pd.DataFrame(rows)
    df.attrs["summaries"] = {
        **{f"mAP, {b}": (f"{b}, std", f"{b}, n") for b in SIZE_COLUMNS},
        "mAP, all sizes": ("all, std", "all, n"),
    }
    df.attrs["title"] = (
        "Table 5 (beyond the paper). AP by object size: mAP (%) per size bucket, "
        "Table 4's configurations"
    )
    df.attrs["caption"] = _describe(used, collected.family, "COCO 2014", "448 px")
    df.attrs["notes"] = [
        _size_rule(used),
        "Each bucket's mAP averages the classes with positives in it; mean ± std over seeds. "
        '"all sizes" is the run\'s mAP (Table 4).',
    ]
    df.attrs["missing"] = _missing_line(collected, [s.name for s in settings])
    return df


def _table5_effects(collected: Collected) -> pd.DataFrame:
    """Table 4b's effects within each size bucket: does a component help small objects more?"""
    from mlic.effects import paired_effect

    sizes = {
        r.name: values
        for records in collected.records.values()
        for r in records
        if (values := _sizes_of(r)[0]) is not None
    }
    rows = []
    for label, a, b, better_a, better_b in _planned_effects():
        for bucket in SIZE_COLUMNS:
            by_seed = [
                {
                    r.seed: sizes[r.name][bucket]
                    for r in collected.records.get(name, [])
                    if r.name in sizes and not math.isnan(sizes[r.name][bucket])
                }
                for name in (a, b)
            ]
            e = paired_effect(*by_seed)
            rows.append(
                {"Effect": label, "Bucket": bucket, **_effect_columns(e, better_a, better_b)}
            )
    df = _effect_frame(
        rows,
        "Table 5 (second block). Table 4b's effects within each size bucket: mAP difference "
        "(points)",
        "mAP in that bucket",
        ["Seeds whose records lack the bucket's mAP (no map_by_size, no positives) are left out."],
    )
    df.attrs["caption"] = ""
    df.attrs["missing"] = ""
    return df


def build_tables(runs_dir: Path, family: str = "embedded") -> dict[str, pd.DataFrame]:
    """Tables 1-4 as DataFrames (numbers; NaN where missing). Keys: table1, table2, table3,
    table3_classes, table4, table4b (effects paired over seeds), table5 (AP by object size),
    table5_effects (table4b's effects per size bucket).
    Each frame's `attrs` hold title, caption, notes and missing."""
    return _tables(collect(Path(runs_dir), family))


def _tables(collected: Collected) -> dict[str, pd.DataFrame]:
    t3, t3_classes = _table3(collected)
    return {
        "table1": _comparison_table(
            collected,
            "table1",
            paper.TABLE1,
            "Table 1. mAP (%) on COCO 2014 val2014 at 448×448",
            "COCO 2014",
        ),
        "table2": _comparison_table(
            collected,
            "table2",
            paper.TABLE2,
            "Table 2. mAP (%) on COCO 2014 val2014 at 576×576",
            "COCO 2014",
        ),
        "table3": t3,
        "table3_classes": t3_classes,
        "table4": _table4(collected),
        "table4b": _table4b(collected),
        "table5": _table5(collected),
        "table5_effects": _table5_effects(collected),
    }


# --------------------------------------------------------------------------- rendering


def _display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Strings for Markdown: mean ± std (n) in one cell, paper numbers as printed, 2 decimals."""
    merged: dict[str, tuple[str, str]] = df.attrs.get("summaries", {})
    hidden = {c for pair in merged.values() for c in pair} | set(df.attrs.get("csv_only", ()))
    out = pd.DataFrame(index=df.index)
    for column in df.columns:
        if column.startswith("_") or column in hidden:
            continue  # internal, or merged into a "this replication" cell
        values = df[column]
        if column in merged:  # "mean" or "mean ± std (n=k)"
            std, n = (df[c] for c in merged[column])
            out[column] = [
                _cell(Summary(m, s, int(k), "")) for m, s, k in zip(values, std, n, strict=True)
            ]
        elif any(word in column for word in ("Difference", "difference", "Gain", " - ")):
            out[column] = [_signed(v) for v in values]
        elif column == f"mAP, {PAPER}" and "_paper_text" in df:
            out[column] = df["_paper_text"]  # as printed: 87.0, 85.41
        elif column.endswith(PAPER):
            out[column] = [f"{v:.1f}" for v in values]  # Table 3 prints one decimal throughout
        else:
            out[column] = values.astype(str)
    return out


def _markdown(df: pd.DataFrame) -> str:
    def esc(x: Any) -> str:
        return str(x).replace("|", "\\|")

    lines = [
        "| " + " | ".join(esc(c) for c in df.columns) + " |",
        "|" + "|".join("---" for _ in df.columns) + "|",
    ]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _block(df: pd.DataFrame) -> str:
    parts = [f"**{df.attrs['title']}**", df.attrs["caption"], _markdown(_display_frame(df))]
    parts += list(df.attrs.get("notes", []))
    if df.attrs.get("missing"):
        parts.append(df.attrs["missing"])
    return "\n\n".join(p for p in parts if p) + "\n"


def _csv(df: pd.DataFrame) -> str:
    markdown_only = set(df.attrs.get("markdown_only", ()))
    data = df[[c for c in df.columns if not c.startswith("_") and c not in markdown_only]]
    return data.to_csv(index=False, float_format="%.2f", lineterminator="\n")


def _write(path: Path, data: str | bytes) -> None:
    """Write atomically (a reader never sees half a file), with the user's umask."""
    atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)


# --------------------------------------------------------------------------- figures


def _figure_frames(collected: Collected) -> tuple[pd.DataFrame | None, str]:
    """Per-epoch history of "ours" (all its seeds, long form) and a subtitle."""
    records = collected.records.get(OURS, [])
    if not records:
        return None, ""
    frames = []
    for r in records:
        h = r.history()
        frames.append(h.assign(run=r.name))
    df = pd.concat(frames, ignore_index=True)
    backbones = ", ".join(sorted({str(r.get("model.backbone")) for r in records}))
    sizes = ", ".join(sorted({str(r.get("data.image_size")) for r in records}))
    where = (
        "generated embedded dataset"
        if all(not r.get("data.root") for r in records)
        else DATASET_NAMES.get(str(records[0].get("data.dataset")), "")
    )
    subtitle = f"{OURS}: {backbones}, {sizes} px, {where}"
    if len(records) > 1:
        subtitle += f"\nmean ± sd over {len(records)} seeds"
    return df, subtitle


def _render_png(draw: Callable[[Any], None]) -> bytes:
    """Draw on a fresh Figure (no pyplot, no backend change) and return its PNG bytes."""
    import io

    import matplotlib as mpl
    import seaborn as sns
    from matplotlib.figure import Figure

    with mpl.rc_context():
        mpl.rcdefaults()  # independent of a notebook's or user's rc settings
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            fig = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
            ax = fig.subplots()
            draw(ax)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
    return buf.getvalue()


def _label(ax: Any, title: str, subtitle: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(f"{title}\n{subtitle}", fontsize="small")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _placeholder(ax: Any, title: str, reason: str) -> None:
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True, transform=ax.transAxes)


def figure5(collected: Collected) -> bytes:
    """Figure 5: training loss of "ours" by epoch (ASL, summed over classes, mean per image)."""
    import seaborn as sns

    df, subtitle = _figure_frames(collected)
    title = "Figure 5. Training loss of ours"

    def draw(ax: Any) -> None:
        if df is None:
            _placeholder(ax, title, f"No complete run record of {OURS}.")
            return
        sns.lineplot(data=df, x="epoch", y="train_loss", errorbar="sd", marker="o", ax=ax)
        _label(ax, title, subtitle)
        ax.set_ylabel("ASL loss per image (sum over classes)")

    return _render_png(draw)


def figure6(collected: Collected) -> bytes:
    """Figure 6: validation mAP (%) of "ours" by epoch, of the model and of its EMA."""
    import seaborn as sns

    df, subtitle = _figure_frames(collected)
    title = "Figure 6. Validation mAP of ours, model and EMA weights"
    records = collected.records.get(OURS, [])
    gains = [last_quarter_gain(r.history().to_dict("records")) for r in records]
    if gains and not any(math.isnan(g) for g in gains):
        # Issue 11's convergence criterion (mlic.convergence), stated where the curve is.
        subtitle += (
            f"\nlast quarter of the epochs: +{max(gains):.2f} points of best-of mAP"
            f"{' (largest over seeds)' if len(gains) > 1 else ''}"
            f"\n{'converged' if max(gains) < CONVERGENCE_THRESHOLD else 'NOT converged'}"
            f" (criterion: < {CONVERGENCE_THRESHOLD:g} point)"
        )

    def draw(ax: Any) -> None:
        if df is None:
            _placeholder(ax, title, f"No complete run record of {OURS}.")
            return
        long = pd.concat(
            [
                df[["epoch", "run"]].assign(mAP=df["map"], weights="model"),
                df[["epoch", "run"]].assign(mAP=df["map_ema"], weights="EMA"),
            ],
            ignore_index=True,
        )
        sns.lineplot(
            data=long,
            x="epoch",
            y="mAP",
            hue="weights",
            style="weights",
            errorbar="sd",
            marker="o",
            ax=ax,
        )
        _label(ax, title, subtitle)
        ax.set_ylabel("mAP (%)")

    return _render_png(draw)


# --------------------------------------------------------------------------- the report


TABLE_FILES = ("table1", "table2", "table3", "table4", "table4b", "table5")  # tables/<name>.md


def build_report(runs_dir: Path, out_dir: Path, family: str = "embedded") -> dict[str, Any]:
    """Write tables/<TABLE_FILES>.{md,csv} (+ table3_classes.csv, table5_effects.csv) and
    figures/figure{5,6}_*.png.

    Returns {"tables": {name: [paths]}, "figures": {name: path}, "missing": {run: reason},
    "skipped": {run: reason}}. Every number comes from `runs_dir` or `mlic.paper`.
    """
    collected = collect(Path(runs_dir), family)
    frames = _tables(collected)
    tables_dir, figures_dir = Path(out_dir) / "tables", Path(out_dir) / "figures"
    # Render everything first, so that a bad record stops the report before any file changes.
    contents: dict[Path, str | bytes] = {}
    written: dict[str, list[Path]] = {}
    for name in TABLE_FILES:
        md = _block(frames[name])
        if name == "table3":
            md += "\n" + _block(frames["table3_classes"])
        if name == "table5":
            md += "\n" + _block(frames["table5_effects"])
        written[name] = [tables_dir / f"{name}.md", tables_dir / f"{name}.csv"]
        contents[written[name][0]] = md
        contents[written[name][1]] = _csv(frames[name])
    written["table3"].append(tables_dir / "table3_classes.csv")
    contents[written["table3"][-1]] = _csv(frames["table3_classes"])
    written["table5"].append(tables_dir / "table5_effects.csv")
    contents[written["table5"][-1]] = _csv(frames["table5_effects"])
    figures = {
        "figure5": figures_dir / "figure5_loss.png",
        "figure6": figures_dir / "figure6_map.png",
    }
    contents[figures["figure5"]] = figure5(collected)
    contents[figures["figure6"]] = figure6(collected)
    for path, data in contents.items():
        _write(path, data)
    return {
        "tables": written,
        "figures": figures,
        "missing": dict(sorted(collected.missing.items())),
        "skipped": dict(sorted(collected.skipped.items())),
    }


WALKTHROUGH_FIGURES = (
    ("walkthrough_predictions", "Walkthrough: validation images, true labels found (+) or missed "
     "(-) and false alarms (!) at the run's thresholds"),
    ("walkthrough_attention", "Walkthrough: where the query of each true class looks "
     "(last decoder layer's cross-attention over the feature-map tokens)"),
)  # fmt: skip


def _walkthrough_block(readme: Path, out_dir: Path) -> list[str]:
    """The walkthrough's pictures and its attention-on-object share, when `mlic reproduce` has
    executed it with an output folder (absent otherwise: nothing is added)."""
    from mlic.attention import SUMMARY_FILE

    parts = []
    summary_path = out_dir / "tables" / SUMMARY_FILE
    if summary_path.is_file():
        s = load_json(summary_path, max_bytes=1 << 16)
        parts.append(
            f"**Where the class queries look** ({s['weights']}; `mlic.attention`): over the first "
            f"{s['images']} validation images, the query of a true class puts "
            f"{100 * s['on_object']:.1f} % of its last-layer cross-attention on the token cells "
            f"its objects' boxes cover, against {100 * s['chance']:.1f} % for an even spread; "
            f"more than an even spread for {100 * s['above_chance']:.1f} % of the {s['pairs']} "
            "(image, class) pairs."
        )
    for name, caption in WALKTHROUGH_FIGURES:
        path = out_dir / "figures" / f"{name}.png"
        if path.is_file():
            parts.append(f"![{caption}]({path.relative_to(readme.parent).as_posix()})")
    return parts


def _pretext_block(out_dir: Path) -> list[str]:
    """One sentence on the pretext runs that pretrained the embedded backbones (`mlic.pretext`),
    from their records; nothing when there are none."""
    fam = FAMILIES["embedded"]
    done = []
    for key, backbone in fam.backbones.items():
        metrics = read_metrics(out_dir / "runs" / pretext.run_name(key))
        if metrics is not None:
            done.append(
                f"`{pretext.run_name(key)}` ({backbone}) {metrics['map']:.2f} % mAP after "
                f"{metrics['epochs']} epochs (best epoch {metrics['best']['epoch']})"
            )
    if not done:
        return []
    return [
        "**Pretrained backbones** (`mlic.pretext`, the stand-in for ImageNet weights): each "
        "backbone was first trained with the GAP head on the pretext tree (one object per "
        "image); on its validation images " + "; ".join(done) + ". Every run above starts "
        "from these weights."
    ]


README_BEGIN = "<!-- results:begin (written by `mlic report --readme README.md`) -->"
README_END = "<!-- results:end -->"


def update_readme(readme: Path, out_dir: Path) -> None:
    """Put the built tables and figures between the README's results markers, so the README
    shows exactly what `results/` holds (a test checks they agree)."""
    text = Path(readme).read_text()
    if README_BEGIN not in text or README_END not in text:
        raise DataError(f"{readme}: no results markers ({README_BEGIN} ... {README_END})")
    parts = []
    for name in TABLE_FILES:
        parts.append((Path(out_dir) / "tables" / f"{name}.md").read_text().strip())
    for name, caption in (
        ("figure5_loss", "Figure 5. Training loss of ours by epoch"),
        ("figure6_map", "Figure 6. Validation mAP of ours by epoch, model and EMA"),
    ):
        rel = (Path(out_dir) / "figures" / f"{name}.png").relative_to(Path(readme).parent)
        parts.append(f"![{caption}]({rel.as_posix()})")
    parts.extend(_pretext_block(Path(out_dir)))
    parts.extend(_walkthrough_block(Path(readme), Path(out_dir)))
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    block = "\n\n".join(parts)
    _write(Path(readme), f"{head}{README_BEGIN}\n\n{block}\n\n{README_END}{tail}")
