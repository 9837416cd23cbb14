"""Tables and figures from fake run records (values, missing runs, seeds, bad records, bytes)
and from the committed ones (rebuilt byte for byte; runs of another configuration listed apart)."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import shutil
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import yaml

import mlic.report as report
from mlic.config import load_config
from mlic.data.embedded import GENERATOR_VERSION
from mlic.errors import DataError
from mlic.paper import TABLE1, TABLE4, VOC_CLASSES
from mlic.plan import TABLES, pretext_run_for, runs
from mlic.report import RESULTS_PAGE, build_report, build_tables, update_readme
from mlic.report.config_diff import flat
from mlic.runrecord import GENERATOR_KEY

OWN_CLASSES = ["circle", "square", "triangle"]
LAST_GAP = 1.5
BEST = "this replication, best epoch"


PLAN_EPOCHS = load_config("embedded").train.epochs


def fake_map(setting: str, seed: int | None) -> float:
    """A distinct, known mAP per setting and seed."""
    names = [r.setting for r in runs("embedded", only=TABLES)]
    return 40.0 + 3.0 * names.index(setting) + (seed or 0) * 0.5


def write_run(
    runs_dir: Path, run, value: float, classes: list[str] = OWN_CLASSES, complete: bool = True
) -> Path:
    """A run record in the engine's format, with the resolved config.yaml `mlic reproduce`
    trains it with (an embedded run loads its pretext run's backbone)."""
    overrides = dict(run.overrides)
    if pretext_run_for(run):
        weights = f"results/runs/{pretext_run_for(run)}/checkpoints/backbone.pt"
        overrides["model.pretrained_file"] = weights
    cfg = load_config(run.preset, overrides)
    d = runs_dir / run.name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(cfg.to_yaml())
    rows = ["epoch,train_loss,lr,map,map_ema,seconds,images_per_s,skipped_images"]
    for e in range(1, cfg.train.epochs + 1):
        rows.append(f"{e},{20 / e:.4f},0.001,{value - 6 / e:.3f},{value - 8 / e:.3f},2.0,50.0,0")
    (d / "history.csv").write_text("\n".join(rows) + "\n")
    best = {
        "epoch": cfg.train.epochs,
        "map": value,
        "weights": "ema",
        "map_model": value - 0.2,
        "map_ema": value,
        "per_class_ap": {c: value + i - 1 for i, c in enumerate(classes)},
    }
    # The last epoch: LAST_GAP points below the best (per class too).
    last = {
        **best,
        "map": value - LAST_GAP,
        "map_ema": value - LAST_GAP,
        "per_class_ap": {c: ap - LAST_GAP for c, ap in best["per_class_ap"].items()},
    }
    metrics = {
        **{k: v for k, v in best.items() if k != "epoch"},
        "best": best,
        "last": last,
        "num_classes_evaluated": len(classes),
        "classes_without_positives": [],
        "dataset": cfg.data.dataset,
        "split": "val",
        "embedded": cfg.data.is_embedded,
        GENERATOR_KEY: GENERATOR_VERSION if cfg.data.is_embedded else None,
        "image_size": cfg.data.image_size,
        "epochs": cfg.train.epochs,
        "seed": cfg.train.seed,
        "device": "cpu",
        "versions": {},
        "git_commit": "0" * 40,
        "num_images": 500,
        "wall_seconds": 10.0,
        "train_images_per_s": 50.0,
        "complete": complete,
    }
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def make_runs(runs_dir: Path, family: str = "embedded", seeds: int = 1, **kwargs) -> None:
    for run in runs(family, seeds=seeds, only=TABLES):  # Table 6's budget runs too
        write_run(runs_dir, run, fake_map(run.setting, run.seed), **kwargs)


def frames(runs_dir: Path, family: str) -> dict[str, pd.DataFrame]:
    """The report's tables as numbers."""
    return {name: t.frame for name, t in build_tables(runs_dir, family).items()}


def row(df: pd.DataFrame, column: str, value: str) -> pd.Series:
    return df[df[column] == value].iloc[0]


@pytest.fixture
def full(tmp_path) -> Path:
    make_runs(tmp_path / "runs")
    return tmp_path / "runs"


# --------------------------------------------------------------------------- values


def test_tables_hold_the_records_numbers_beside_the_papers(full):
    tables = frames(full, "embedded")
    t1 = tables["table1"]
    ours = row(t1, "Method", next(r.label for r in TABLE1 if r.key == "ours"))
    assert ours["mAP, paper"] == 87.0
    assert ours[f"mAP, {BEST}"] == fake_map("coco448-resnest-dual", None)
    assert ours["Difference"] == pytest.approx(ours[f"mAP, {BEST}"] - 87.0)
    assert ours["n"] == 1 and math.isnan(ours["std"])
    gcn = row(t1, "Method", "ML-GCN")  # a row the project does not run
    assert gcn["mAP, paper"] == 83.0 and math.isnan(gcn[f"mAP, {BEST}"])

    t4 = tables["table4"]
    assert list(t4["mAP, paper"])[:4] == [c.map.value for c in TABLE4]
    keys = zip(t4["Backbone"], t4["Head"], strict=True)
    got = dict(zip(keys, t4[f"mAP, {BEST}"], strict=True))
    assert got["ResNeSt", "Transformer"] == fake_map("coco448-resnest-transformer", None)
    gains = t4["Gain over ResNet + Transformer (this replication)"]
    assert gains.iloc[3] == pytest.approx(
        fake_map("coco448-resnest-dual", None) - fake_map("coco448-resnet-transformer", None)
    )
    assert t4["Gain over ResNet + Transformer (paper)"].round(2).tolist()[:4] == [
        0.0, 1.05, 0.56, 1.59
    ]  # fmt: skip


def test_table4_has_the_other_batchformer_reading_beyond_the_paper(full):
    table = build_tables(full, "embedded")["table4"]
    t4 = table.frame
    assert len(t4) == len(TABLE4) + 1
    extra = t4.iloc[-1]
    assert extra["Backbone"] == "ResNeSt" and "beyond the paper" in extra["Head"]
    assert math.isnan(extra["mAP, paper"]) and math.isnan(extra["Difference"])
    assert extra[f"mAP, {BEST}"] == fake_map("coco448-resnest-dual-shared", None)
    assert extra["Runs"] == "coco448-resnest-dual-shared"
    assert extra["Gain over ResNet + Transformer (this replication)"] == pytest.approx(
        fake_map("coco448-resnest-dual-shared", None) - fake_map("coco448-resnet-transformer", None)
    )
    md = report.markdown_block(table)
    line = next(x for x in md.splitlines() if "beyond the paper" in x and x.startswith("|"))
    assert line.split("|")[3].strip() == ""  # no paper number for it


def test_tables_show_the_best_epoch_and_the_csv_the_last(full, tmp_path):
    build_report(full, tmp_path, "embedded")
    for name in ("table1", "table2", "table4"):
        md = (tmp_path / "tables" / f"{name}.md").read_text()
        assert f"mAP, {BEST}" in md and "last epoch" not in md.split("\n\n")[2]
        csv = pd.read_csv(tmp_path / "tables" / f"{name}.csv")
        done = csv[f"mAP, {BEST}"].notna()
        assert done.any()
        last = csv["mAP, this replication, last epoch"]
        assert (csv[f"mAP, {BEST}"][done] - last[done]).round(2).eq(LAST_GAP).all()
    t3 = pd.read_csv(tmp_path / "tables" / "table3_classes.csv")
    gap = t3[f"Ours, {BEST}"] - t3["Ours, this replication, last epoch"]
    assert gap.round(2).eq(LAST_GAP).all()  # per class and the mAP row


def test_a_record_without_best_and_last_is_missing_with_its_reason(full, tmp_path):
    path = full / "coco448-resnest-dual" / "metrics.json"
    old = json.loads(path.read_text())
    del old["best"], old["last"]  # as written before the best epoch was recorded
    path.write_text(json.dumps(old))
    out = build_report(full, tmp_path / "results", "embedded")
    assert "no best/last epoch record" in out["missing"]["coco448-resnest-dual"]


def test_table3_blocks_for_the_embedded_dataset(full):
    tables = frames(full, "embedded")
    paper_block, own = tables["table3"], tables["table3_classes"]
    assert list(paper_block["Class"]) == [*VOC_CLASSES, "mAP"]
    # the generated classes are not VOC's: only the mAP row compares
    assert paper_block[f"Ours, {BEST}"].iloc[:-1].isna().all()
    m = row(paper_block, "Class", "mAP")
    assert m[f"Ours, {BEST}"] == fake_map("voc448-resnest-dual", None)
    assert m["Ours, difference"] == pytest.approx(m[f"Ours, {BEST}"] - 96.0)
    assert list(own["Class"]) == [*OWN_CLASSES, "mAP"]
    value = fake_map("voc448-resnest-dual", None)
    assert list(own[f"Ours, {BEST}"]) == [value - 1, value, value + 1, value]
    assert own["Ours - ResNet"].iloc[0] == pytest.approx(
        value - fake_map("voc448-resnet-gap", None)
    )


def test_table3_fills_voc_classes_for_the_paper_family(tmp_path):
    devkit = list(VOC_CLASSES.values())
    make_runs(tmp_path / "runs", family="paper", classes=devkit)
    table = build_tables(tmp_path / "runs", "paper")["table3"]
    t3 = table.frame
    value = fake_map("voc448-resnest-dual", None)
    bike = row(t3, "Class", "bike")  # devkit "bicycle", second class: AP = value + 0
    assert bike[f"Ours, {BEST}"] == value
    assert bike["Ours, difference"] == pytest.approx(value - 99.1)
    assert t3[f"Ours, {BEST}"].notna().all()
    caption = table.caption
    assert "VOC 2007" in caption and "generated" not in caption and "resnest101e" in caption


def test_seeds_give_mean_std_and_n(tmp_path):
    make_runs(tmp_path / "runs", seeds=3)
    table = build_tables(tmp_path / "runs", "embedded")["table1"]
    t1 = table.frame
    ours = row(t1, "Method", next(r.label for r in TABLE1 if r.key == "ours"))
    values = [fake_map("coco448-resnest-dual", k) for k in range(3)]
    assert ours["n"] == 3
    assert ours[f"mAP, {BEST}"] == pytest.approx(statistics.mean(values))
    assert ours["std"] == pytest.approx(statistics.stdev(values))
    md = report.markdown_block(table)
    assert f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n=3)" in md


# --------------------------------------------------------------------------- files


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_files_and_byte_identical_rebuild(full, tmp_path):
    backend = matplotlib.get_backend()
    out = tmp_path / "results"
    paths = build_report(full, out, "embedded")
    assert paths["missing"] == {} and paths["skipped"] == {}
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert [p.relative_to(out).as_posix() for p in files] == [
        "figures/figure5_loss.png",
        "figures/figure6_map.png",
        "tables/table1.csv",
        "tables/table1.md",
        "tables/table2.csv",
        "tables/table2.md",
        "tables/table3.csv",
        "tables/table3.md",
        "tables/table3_classes.csv",
        "tables/table4.csv",
        "tables/table4.md",
        "tables/table4b.csv",
        "tables/table4b.md",
        "tables/table5.csv",
        "tables/table5.md",
        "tables/table5_effects.csv",
        "tables/table6.csv",
        "tables/table6.md",
    ]
    first = {p: p.read_bytes() for p in files}
    for name in ("figure5", "figure6"):
        data = paths["figures"][name].read_bytes()
        w, h = png_size(data)
        assert (w, h) == (640, 400)
        assert b"Software" not in data and b"matplotlib" not in data.lower()
    shutil.rmtree(out / "tables")
    shutil.rmtree(out / "figures")
    build_report(full, out, "embedded")
    assert {p: p.read_bytes() for p in files} == first
    assert matplotlib.get_backend() == backend  # the report leaves the backend alone

    md = (out / "tables" / "table1.md").read_text()
    assert "paper" in md and "this replication" in md
    assert "not COCO 2014" in md and "resnet14t" in md and "resnest14d" in md and "56 px" in md
    assert "72 px" in (out / "tables" / "table2.md").read_text()
    t4 = (out / "tables" / "table4.md").read_text()
    assert "+0.51" in t4 and "0.56" in t4
    csv = pd.read_csv(out / "tables" / "table1.csv")
    assert csv["mAP, paper"].tolist() == [r.map.value for r in TABLE1]


def test_a_missing_run_is_an_empty_cell_and_listed(full, tmp_path):
    shutil.rmtree(full / "coco448-resnet-dual")
    (full / "coco576-resnest-dual" / "metrics.json").unlink()
    status = json.loads((full / "voc448-resnet-gap" / "metrics.json").read_text())
    status["complete"] = False
    (full / "voc448-resnet-gap" / "metrics.json").write_text(json.dumps(status))

    out = build_report(full, tmp_path / "results", "embedded")
    assert set(out["missing"]) == {
        "coco448-resnet-dual",
        "coco576-resnest-dual",
        "voc448-resnet-gap",
    }
    assert "no metrics.json" in out["missing"]["coco576-resnest-dual"]
    assert "not marked complete" in out["missing"]["voc448-resnet-gap"]
    t4 = pd.read_csv(tmp_path / "results" / "tables" / "table4.csv")
    dual = t4[(t4["Backbone"] == "ResNet") & (t4["Head"] == "dual-branch Transformer")].iloc[0]
    assert math.isnan(dual[f"mAP, {BEST}"]) and dual["n"] == 0
    md = (tmp_path / "results" / "tables" / "table4.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| ResNet | dual-branch"))
    assert line.split("|")[4].strip() == ""  # the "this replication" cell is empty
    assert "Missing runs: coco448-resnet-dual" in md
    assert "coco576-resnest-dual" in (tmp_path / "results" / "tables" / "table2.md").read_text()


def test_missing_ours_gives_placeholder_figures(full, tmp_path):
    shutil.rmtree(full / "coco448-resnest-dual")
    out = build_report(full, tmp_path / "results", "embedded")
    assert "coco448-resnest-dual" in out["missing"]
    assert png_size(out["figures"]["figure5"].read_bytes()) == (640, 400)


def test_records_of_another_family_are_not_used(full):
    # An embedded record under a name of the plan is not the paper family's run: it is missing
    # there, and listed with how it differs.
    collected = report.collect(full, "paper")
    assert all(not records for records in collected.records.values())
    assert "not the paper plan's configuration" in collected.missing["coco448-resnest-dual"]
    diffs = {d.key: d for d in collected.other["coco448-resnest-dual"].differences}
    assert (diffs["data.image_size"].recorded, diffs["data.image_size"].planned) == (56, 448)
    assert diffs["model.backbone"].planned == "resnest101e"
    # The paper's configuration trained on the embedded dataset is not the paper's run either.
    run = next(r for r in runs("paper") if r.name == "coco448-resnet-gap")
    shutil.rmtree(full / run.name)
    write_run(full, dataclasses.replace(run, overrides={**run.overrides, "data.root": ""}), 1.0)
    other = report.collect(full, "paper").other["coco448-resnet-gap"]
    assert [str(d) for d in other.differences] == [
        "data.root: '' (plan: a data folder (--data-root))"
    ]


def test_duplicate_seed_is_skipped(full):
    run = next(r for r in runs("embedded", seeds=2) if r.name == "coco448-resnest-dual-seed1")
    overrides = {**run.overrides, "name": "coco448-resnest-dual-seed0", "train.seed": 0}
    run = dataclasses.replace(run, name="coco448-resnest-dual-seed0", overrides=overrides, seed=0)
    write_run(full, run, 99.0)  # seed 0 again (made by hand), beside the plain seed-0 run
    collected = report.collect(full, "embedded")
    assert [r.name for r in collected.records["coco448-resnest-dual"]] == ["coco448-resnest-dual"]
    assert "coco448-resnest-dual-seed0" in collected.skipped


# --------------------------------------------------------------------------- bad records


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("metrics.json", "{not json", "not valid JSON"),
        ("metrics.json", "[1, 2]", "expected a JSON object"),
        ("metrics.json", '{"complete": true, "map": "high"}', "'map' = 'high' is not a number"),
        ("config.yaml", "model: [unclosed", "not valid YAML"),
        ("config.yaml", "model:\n  head: dual\n", "missing key 'data.dataset'"),
        ("history.csv", "epoch,train_loss\n1,2.0\n", "missing column 'map'"),
        ("history.csv", "epoch,train_loss,map,map_ema\n1,x,3,4\n", "'train_loss'"),
    ],
)
def test_a_malformed_record_is_a_one_line_error_naming_the_file(
    full, tmp_path, filename, content, message
):
    path = full / "coco448-resnest-dual" / filename
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        build_report(full, tmp_path / "results", "embedded")
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    assert not (tmp_path / "results").exists()  # nothing written, not even the tables


def test_unknown_family_and_runs_dir(tmp_path):
    from mlic.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown plan family"):
        build_tables(tmp_path, "laptop")
    with pytest.raises(DataError, match="no such directory"):
        build_tables(tmp_path / "nowhere", "embedded")


def test_empty_runs_dir_gives_empty_cells(tmp_path):
    out = build_report(tmp_path, tmp_path / "results", "embedded")
    assert len(out["missing"]) == len(runs("embedded", only=TABLES))
    t1 = pd.read_csv(tmp_path / "results" / "tables" / "table1.csv")
    assert t1[f"mAP, {BEST}"].isna().all()


def test_the_report_never_imports_the_engine():
    package = Path(report.__file__).parent
    graph: dict[str, set[str]] = {}
    outside: set[str] = set()
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        module = f"mlic.report.{path.stem}" if path.stem != "__init__" else "mlic.report"
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("mlic.report."):
                graph[module].add(node.module)
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{module} imports private {private} from {node.module}"
            elif isinstance(node, ast.ImportFrom) and node.module.startswith("mlic"):
                outside.add(node.module)
            elif isinstance(node, ast.Import):
                outside.update(a.name for a in node.names if a.name.startswith("mlic"))
    assert outside <= {
        "mlic",  # paper, pretext (torch only inside a function that writes weights)
        "mlic.attention",  # the walkthrough's summary file name (torch only inside functions)
        "mlic.config",  # the plan's configuration, to compare records with (no torch)
        "mlic.effects",  # the paired CI (scipy, no torch)
        "mlic.errors",
        "mlic.plan",
        "mlic.paper",
        "mlic.runrecord",  # the one metrics.json reader; no torch (checked below)
        "mlic.safeload",  # bounded reading of files (no torch)
    }
    done: set[str] = set()  # no import cycle inside the package: a topological order exists
    while len(done) < len(graph):
        ready = {m for m, deps in graph.items() if m not in done and deps <= done}
        assert ready, f"import cycle among {sorted(set(graph) - done)}"
        done |= ready
    code = "import sys, mlic.report; print(sorted({'torch', 'mlic.engine'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    assert proc.stdout.strip() == "[]"


def test_captions_say_where_the_backbone_weights_came_from(full, tmp_path):
    caption = build_tables(full, "embedded")["table1"].caption
    assert "(pretrained on the embedded pretext tree)" in caption and "scratch" not in caption
    make_runs(tmp_path / "paper", family="paper")
    caption = build_tables(tmp_path / "paper", "paper")["table1"].caption
    assert "(ImageNet weights)" in caption


# --------------------------------------------------------------------------- committed records

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results"
# Files under results/ that `mlic reproduce` writes beside the report (the walkthrough's): the
# results block of docs/results.md shows them, the report does not write them.
NOT_THE_REPORTS = ("tables/attention_on_objects.json", "figures/walkthrough_*.png")


def committed_runs(tmp_path: Path) -> Path:
    """A copy of the committed run records (without checkpoints), as `<tmp>/results/runs`."""
    runs_dir = tmp_path / "results" / "runs"
    shutil.copytree(COMMITTED / "runs", runs_dir, ignore=shutil.ignore_patterns("checkpoints"))
    return runs_dir


def copy_record(runs_dir: Path, source: str, name: str, change) -> Path:
    """A copy of a record under another name, its config.yaml edited by `change(config)`."""
    shutil.copytree(runs_dir / source, runs_dir / name)
    path = runs_dir / name / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return runs_dir / name


def test_the_committed_results_are_rebuilt_byte_for_byte(tmp_path):
    runs_dir = committed_runs(tmp_path)
    results = runs_dir.parent
    for pattern in NOT_THE_REPORTS:
        for path in COMMITTED.glob(pattern):
            target = results / path.relative_to(COMMITTED)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    page = tmp_path / RESULTS_PAGE  # <tmp>/docs/results.md beside <tmp>/results, as in the repo
    page.parent.mkdir()
    shutil.copyfile(ROOT / RESULTS_PAGE, page)
    out = build_report(runs_dir, results, "embedded")
    update_readme(page, results)
    assert out["missing"] == {} and out["other"] == {}
    for folder in ("tables", "figures"):
        want = sorted(p.relative_to(COMMITTED) for p in (COMMITTED / folder).iterdir())
        got = sorted(p.relative_to(results) for p in (results / folder).iterdir())
        assert got == want
        for rel in want:
            assert (results / rel).read_bytes() == (COMMITTED / rel).read_bytes(), rel
    assert page.read_bytes() == (ROOT / RESULTS_PAGE).read_bytes()


def test_a_run_of_another_configuration_is_listed_not_averaged(tmp_path):
    runs_dir = committed_runs(tmp_path)
    before = build_tables(runs_dir, "embedded")["table1"].frame

    def one_epoch(c):
        c["train"].update(epochs=1, seed=3)

    def from_scratch(c):
        del c["model"]["pretrained_file"]
        c["train"]["seed"] = 4

    copy_record(runs_dir, "coco448-resnest-dual", "coco448-resnest-dual-seed3", one_epoch)
    copy_record(runs_dir, "coco448-resnest-dual", "coco448-resnest-dual-seed4", from_scratch)
    out_dir = tmp_path / "out"
    out = build_report(runs_dir, out_dir, "embedded")
    pd.testing.assert_frame_equal(build_tables(runs_dir, "embedded")["table1"].frame, before)
    csv = (out_dir / "tables" / "table1.csv").read_bytes()
    assert csv == (COMMITTED / "tables" / "table1.csv").read_bytes()
    assert "not the embedded plan's configuration" in out["missing"]["coco448-resnest-dual-seed3"]
    assert (
        "coco448-resnest-dual-seed4 (not the embedded plan's"
        in (out_dir / "tables" / "table1.md").read_text()
    )

    other = pd.read_csv(out_dir / "tables" / "other_runs.csv")
    assert list(other["Run"]) == ["coco448-resnest-dual-seed3", "coco448-resnest-dual-seed4"]
    assert list(other["Setting"]) == ["coco448-resnest-dual"] * 2 and list(other["Seed"]) == [3, 4]
    differs = dict(zip(other["Run"], other["Differs from the plan in"], strict=True))
    assert differs["coco448-resnest-dual-seed3"] == f"train.epochs: 1 (plan: {PLAN_EPOCHS})"
    assert differs["coco448-resnest-dual-seed4"] == (
        "model.pretrained_file: '' (plan: '<results>/runs/pretext-resnest/checkpoints/backbone.pt')"
    )
    recorded = json.loads((runs_dir / "coco448-resnest-dual" / "metrics.json").read_text())["map"]
    assert other[f"mAP, {BEST}"].tolist() == [round(recorded, 2)] * 2
    md = (out_dir / "tables" / "other_runs.md").read_text()
    assert (
        f"train.epochs: 1 (plan: {PLAN_EPOCHS})" in md and "train.seed" in md
    )  # the ignore list is stated
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.README_BEGIN}\n{report.README_END}\n")
    update_readme(readme, out_dir)
    assert md.strip() in readme.read_text()

    # Once the runs are gone, so is their table (and the results page's copy of it).
    for name in ("coco448-resnest-dual-seed3", "coco448-resnest-dual-seed4"):
        shutil.rmtree(runs_dir / name)
    out = build_report(runs_dir, out_dir, "embedded")
    assert out["other"] == {} and not list((out_dir / "tables").glob("other_runs.*"))
    update_readme(readme, out_dir)
    assert "Other runs." not in readme.read_text()


def test_a_seed_may_differ_only_in_the_ignored_keys(tmp_path):
    runs_dir = committed_runs(tmp_path)
    ours = next(r.label for r in TABLE1 if r.key == "ours")
    n = row(frames(runs_dir, "embedded")["table1"], "Method", ours)["n"]

    def operational(c):
        c["name"] = "renamed by hand"
        c["description"] = "another text"
        c["data"].update(num_workers=3, cache_images=False)
        c["model"]["pretrained_file"] = "/elsewhere/runs/pretext-resnest/checkpoints/backbone.pt"
        c["train"].update(
            seed=7, device="cpu", num_threads=1, compile=False, compile_mode="max-autotune",
            channels_last=True, activation_checkpointing="backbone", log_iteration_loss=True,
            save_best=False,
        )  # fmt: skip

    copy_record(runs_dir, "coco448-resnest-dual", "coco448-resnest-dual-seed7", operational)
    collected = report.collect(runs_dir, "embedded")
    assert collected.other == {}
    assert row(frames(runs_dir, "embedded")["table1"], "Method", ours)["n"] == n + 1
    # Each of those keys is one the configuration has (a renamed key would stop being ignored).
    assert set(flat(load_config("embedded"))) >= report.IGNORED


def test_a_seed_trained_on_an_older_generators_images_is_listed_not_averaged(tmp_path):
    runs_dir = committed_runs(tmp_path)
    ours = next(r.label for r in TABLE1 if r.key == "ours")
    n = row(frames(runs_dir, "embedded")["table1"], "Method", ours)["n"]
    old = copy_record(
        runs_dir, "coco448-resnest-dual", "coco448-resnest-dual-seed5", lambda c: None
    )
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["train"]["seed"] = 5
    (old / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    metrics = json.loads((old / "metrics.json").read_text())
    metrics[GENERATOR_KEY] = GENERATOR_VERSION - 1
    (old / "metrics.json").write_text(json.dumps(metrics))
    collected = report.collect(runs_dir, "embedded")
    (difference,) = collected.other["coco448-resnest-dual-seed5"].differences
    assert str(difference) == (
        f"metrics.{GENERATOR_KEY}: {GENERATOR_VERSION - 1} (plan: {GENERATOR_VERSION})"
    )
    assert row(frames(runs_dir, "embedded")["table1"], "Method", ours)["n"] == n


def test_a_tagged_run_is_listed_against_its_setting(tmp_path):
    runs_dir = committed_runs(tmp_path)

    def lr(c):
        c["train"]["lr"] = 0.004

    copy_record(runs_dir, "coco448-resnest-dual-shared", "coco448-resnest-dual-shared-lr", lr)
    copy_record(runs_dir, "coco448-resnet-gap", "coco448-resnet-gap-again", lambda c: None)
    copy_record(runs_dir, "voc448-resnet-gap", "voc448-resnet-gap-old", lambda c: c.update(x=1))
    collected = report.collect(runs_dir, "embedded")
    assert sorted(collected.missing) == []  # a tagged run is not a planned run
    other = collected.other
    assert other["coco448-resnest-dual-shared-lr"].setting == "coco448-resnest-dual-shared"
    assert [str(d) for d in other["coco448-resnest-dual-shared-lr"].differences] == [
        "train.lr: 0.004 (plan: 0.002)"
    ]
    assert other["coco448-resnet-gap-again"].differences == ()
    (refused,) = other["voc448-resnet-gap-old"].differences
    assert refused.key == "config.yaml" and "unknown key 'x'" in refused.recorded
    t = build_tables(runs_dir, "embedded")["other_runs"]
    again = row(t.frame, "Run", "coco448-resnet-gap-again")
    assert again["Differs from the plan in"].startswith("none: the plan's configuration")
    assert again["Difference from the setting's runs"] == pytest.approx(0.0)
