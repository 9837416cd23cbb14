"""Table 4b (effects paired over seeds, with a 95 % CI) and Table 5 (AP by object size) from
hand-made run records: the numbers, the verdicts, too few seeds, records without the field."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_report import write_run

import mlic.report as report
from mlic.errors import DataError
from mlic.plan import SETTINGS, runs
from mlic.report import EFFECTS, build_report, build_tables, update_readme

# mAP per Table 4 setting and seed: ResNeSt clearly better than ResNet (by ~2, noise 0.1);
# the dual head within noise of the plain one.
BASE = {
    "coco448-resnet-transformer": 40.0,
    "coco448-resnest-transformer": 42.0,
    "coco448-resnet-dual": 40.0,
    "coco448-resnest-dual": 42.5,
    "coco448-resnest-dual-shared": 42.0,
}
NOISE = {
    "coco448-resnet-transformer": [0.0, 0.3, -0.2],
    "coco448-resnest-transformer": [0.1, 0.2, -0.1],
    "coco448-resnet-dual": [0.4, -0.3, 0.1],
    "coco448-resnest-dual": [0.2, 0.4, -0.3],
    "coco448-resnest-dual-shared": [0.1, -0.1, 0.0],
}


def value(setting: str, seed: int | None) -> float:
    return BASE[setting] + NOISE[setting][seed or 0]


def size_block(m: float, small: int = 0) -> dict:
    """A map_by_size as the engine writes it (mlic.metrics.map_by_size)."""
    return {
        "small": {
            "map": m - 10 if small else None,
            "chance_map": 1.5 if small else None,
            "num_positives": small,
            "num_classes": min(small, 3),
        },
        "medium": {"map": m - 3, "num_positives": 300, "num_classes": 3},
        "large": {"map": m + 4, "num_positives": 500, "num_classes": 3},
        "num_positives_without_area": 0,
        "rule": "...",
        "reference_image_px": [640, 480],
        "limits_px2": [1024, 9216],
        "limits_fraction": [1024 / 307200, 9216 / 307200],
    }


def make_table4_runs(runs_dir: Path, seeds: int, sizes: bool = False) -> list[Path]:
    out = []
    for run in runs("embedded", seeds=seeds, only="table4"):
        d = write_run(runs_dir, run, value(run.setting, run.seed))
        if sizes:
            path = d / "metrics.json"
            metrics = json.loads(path.read_text())
            metrics["map_by_size"] = size_block(metrics["map"])
            path.write_text(json.dumps(metrics))
        out.append(d)
    return out


def effect_row(t4b: pd.DataFrame, label_start: str) -> pd.Series:
    return t4b[t4b["Effect"].str.startswith(label_start)].iloc[0]


# --------------------------------------------------------------------------- Table 4b


def test_table4b_paired_differences_and_intervals_over_three_seeds(tmp_path):
    make_table4_runs(tmp_path / "runs", seeds=3)
    table = build_tables(tmp_path / "runs", "embedded")["table4b"]
    t4b = table.frame
    planned = {s.name for s in SETTINGS}
    want = [e[0] for e in EFFECTS if e[1] in planned and e[2] in planned]
    assert list(t4b["Effect"]) == want and len(want) >= 3  # the shared row once it is planned

    for label, a, b, *_ in EFFECTS:
        if label not in want:
            continue
        row = effect_row(t4b, label)
        x = np.array([value(a, s) for s in range(3)])
        y = np.array([value(b, s) for s in range(3)])
        ci = stats.ttest_rel(x, y).confidence_interval(0.95)
        assert row["Paired seeds"] == 3 and row["Seeds"] == "0, 1, 2"
        assert row["Mean paired difference, this replication"] == pytest.approx(np.mean(x - y))
        assert (row["95% CI, low"], row["95% CI, high"]) == pytest.approx((ci.low, ci.high))
        resolved = ci.low > 0 or ci.high < 0
        assert row["Verdict"].startswith("resolved" if resolved else "not resolved")
    backbone = effect_row(t4b, "ResNeSt vs ResNet")
    assert backbone["Verdict"] == "resolved: ResNeSt better (CI excludes 0)"
    assert backbone["Difference, paper"] == pytest.approx(86.46 - 85.41)
    assert effect_row(t4b, "dual-branch vs plain")["Verdict"] == "not resolved (CI includes 0)"

    md = report.markdown_block(table)
    low, high = backbone["95% CI, low"], backbone["95% CI, high"]
    assert f"[{low:+.2f}, {high:+.2f}]" in md and "Student's t" in md
    paragraphs = md.split("\n\n")
    assert paragraphs[-2].startswith("Each difference is run A's mAP minus run B's")
    assert paragraphs[-1].startswith("The paper reports one run per configuration")
    assert "95% CI, low" not in md  # the numeric bounds are for the CSV
    csv = pd.read_csv(
        Path(build_report(tmp_path / "runs", tmp_path / "out")["tables"]["table4b"][1])
    )
    assert "95% CI" not in csv.columns and csv["95% CI, low"].notna().all()


def test_table4b_says_so_with_one_seed_instead_of_an_interval(tmp_path):
    make_table4_runs(tmp_path / "runs", seeds=1)
    t4b = build_tables(tmp_path / "runs", "embedded")["table4b"].frame
    assert (t4b["Paired seeds"] == 1).all()
    assert t4b["95% CI, low"].isna().all() and (t4b["95% CI"] == "").all()
    assert t4b["Verdict"].str.startswith("no CI: 1 paired seed").all()
    row = effect_row(t4b, "ResNeSt vs ResNet")
    assert row["Mean paired difference, this replication"] == pytest.approx(
        value("coco448-resnest-transformer", 0) - value("coco448-resnet-transformer", 0)
    )


def test_table4b_leaves_out_seeds_without_a_partner(tmp_path):
    dirs = make_table4_runs(tmp_path / "runs", seeds=3)
    gone = next(d for d in dirs if d.name == "coco448-resnet-transformer-seed2")
    (gone / "metrics.json").unlink()
    table = build_tables(tmp_path / "runs", "embedded")["table4b"]
    row = effect_row(table.frame, "ResNeSt vs ResNet")
    assert row["Paired seeds"] == 2 and row["Seeds"] == "0, 1"
    assert "Seeds without a partner, left out: ResNeSt vs ResNet" in report.markdown_block(table)
    assert "Missing runs: coco448-resnet-transformer-seed2" in report.markdown_block(table)


# --------------------------------------------------------------------------- Table 5


def test_table5_means_over_seeds_and_states_the_rule_and_counts(tmp_path):
    make_table4_runs(tmp_path / "runs", seeds=3, sizes=True)
    table = build_tables(tmp_path / "runs", "embedded")["table5"]
    t5 = table.frame
    table4 = [s.name for s in SETTINGS if any(f.table == "table4" for f in s.feeds)]
    assert list(t5["Setting"]) == table4 + ["coco576-resnet-transformer", "coco576-resnest-dual"]
    missing = report.markdown_block(table).split("Missing runs: ")[1]
    assert "coco576-resnest-dual (no run directory)" in missing
    row = t5[t5["Setting"] == "coco448-resnest-dual"].iloc[0]
    maps = [value("coco448-resnest-dual", s) for s in range(3)]
    assert row["mAP, medium"] == pytest.approx(np.mean(maps) - 3)
    assert row["mAP, large"] == pytest.approx(np.mean(maps) + 4)
    assert row["large, std"] == pytest.approx(np.std(maps, ddof=1)) and row["large, n"] == 3
    assert row["mAP, all sizes"] == pytest.approx(np.mean(maps))
    assert math.isnan(row["mAP, small"]) and row["small, n"] == 0
    assert math.isnan(row["small at chance"]) and row["Input"] == "56 px"
    assert row["Note"] == "no positives in the small bucket"
    md = report.markdown_block(table)
    assert "small < 32² px, medium < 96² px" in md and "640×480" in md and "0.33 %" in md
    assert "small 0 (0), medium 300 (3), large 500 (3)" in md
    assert f"{np.mean(maps) + 4:.2f} ± {np.std(maps, ddof=1):.2f} (n=3)" in md


def test_table5_adds_the_larger_input_and_the_small_buckets_chance_level(tmp_path):
    make_table4_runs(tmp_path / "runs", seeds=1)
    for run in runs("embedded", seeds=1, only="table2"):
        d = tmp_path / "runs" / run.name
        if not d.exists():
            d = write_run(tmp_path / "runs", run, 45.0)
            path = d / "metrics.json"
            metrics = json.loads(path.read_text())
            metrics["map_by_size"] = size_block(45.0, small=40)
            path.write_text(json.dumps(metrics))
    table = build_tables(tmp_path / "runs", "embedded")["table5"]
    row = table.frame.set_index("Setting").loc["coco576-resnest-dual"]
    assert row["Input"] == "72 px" and row["mAP, small"] == pytest.approx(35.0)
    assert row["small at chance"] == pytest.approx(1.5)
    md = report.markdown_block(table)
    assert "Missing runs" not in md and "small at chance" in md and "random ranking" in md
    assert "input 56, 72 px (paper: 448 and 576 px)" in md


def test_table5_second_block_pairs_the_effects_within_each_bucket(tmp_path):
    dirs = make_table4_runs(tmp_path / "runs", seeds=3, sizes=True)
    # One record loses its map_by_size: its seed has no partner in any bucket of its effects.
    gone = next(d for d in dirs if d.name == "coco448-resnet-transformer")  # seed 0
    metrics = json.loads((gone / "metrics.json").read_text())
    del metrics["map_by_size"]
    (gone / "metrics.json").write_text(json.dumps(metrics))
    effects = build_tables(tmp_path / "runs", "embedded")["table5_effects"].frame
    row = effects[effects["Effect"].str.startswith("ResNeSt vs ResNet")]
    large = row[row["Bucket"] == "large"].iloc[0]
    x = np.array([value("coco448-resnest-transformer", s) + 4 for s in (1, 2)])
    y = np.array([value("coco448-resnet-transformer", s) + 4 for s in (1, 2)])
    ci = stats.ttest_rel(x, y).confidence_interval(0.95)
    assert large["Paired seeds"] == 2 and large["Seeds"] == "1, 2"
    assert (large["95% CI, low"], large["95% CI, high"]) == pytest.approx((ci.low, ci.high))
    small = row[row["Bucket"] == "small"].iloc[0]  # no positives: nothing to pair
    assert small["Paired seeds"] == 0 and small["Verdict"].startswith("no CI: 0 paired seeds")
    md = (
        Path(build_report(tmp_path / "runs", tmp_path / "out")["tables"]["table5"][0])
    ).read_text()
    assert "Table 5 (second block)" in md and f"[{ci.low:+.2f}, {ci.high:+.2f}]" in md


def test_table5_without_map_by_size_is_an_empty_cell_with_the_reason(tmp_path):
    dirs = make_table4_runs(tmp_path / "runs", seeds=1, sizes=True)
    old = next(d for d in dirs if d.name == "coco448-resnet-dual")
    metrics = json.loads((old / "metrics.json").read_text())
    del metrics["map_by_size"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    out = build_report(tmp_path / "runs", tmp_path / "results")
    md = (tmp_path / "results" / "tables" / "table5.md").read_text()
    line = next(x for x in md.splitlines() if "| coco448-resnet-dual |" in x)
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[3] == "56 px" and cells[4:9] == ["", "", "", "", ""]
    assert (
        cells[-1].startswith("no map_by_size in metrics.json")
        and "coco448-resnet-dual" in cells[-1]
    )
    assert "coco448-resnet-dual" not in out["missing"]  # complete: only the field is absent
    other = next(x for x in md.splitlines() if "| coco448-resnest-dual |" in x)
    assert other.split("|")[7].strip() != ""  # the medium cell of a run that has the field


def test_table5_with_no_record_at_all_builds(tmp_path):
    table = build_tables(tmp_path, "embedded")["table5"]
    assert table.frame["mAP, medium"].isna().all() and "Missing runs" in report.markdown_block(
        table
    )


def test_a_malformed_map_by_size_is_a_one_line_error_naming_the_file(tmp_path):
    dirs = make_table4_runs(tmp_path / "runs", seeds=1, sizes=True)
    path = dirs[0] / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["map_by_size"]["large"]["map"] = "big"
    path.write_text(json.dumps(metrics))
    with pytest.raises(DataError, match="map_by_size") as info:
        build_tables(tmp_path / "runs", "embedded")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- the results block


def test_the_readme_block_holds_the_new_tables(tmp_path):
    make_table4_runs(tmp_path / "runs", seeds=2, sizes=True)
    build_report(tmp_path / "runs", tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.README_BEGIN}\nold\n{report.README_END}\n\ntail\n")
    update_readme(readme, tmp_path / "results")
    text = readme.read_text()
    for name in ("table4", "table4b", "table5"):
        block = (tmp_path / "results" / "tables" / f"{name}.md").read_text().strip()
        assert block in text
    assert text.index("Table 4b.") < text.index("Table 5 (beyond the paper)") < text.index("tail")


def _readme_from_one_seed(tmp_path: Path) -> tuple[Path, Path]:
    """A README whose results block `update_readme` filled from one seed's Table 4 runs."""
    make_table4_runs(tmp_path / "runs", seeds=1)
    results = tmp_path / "results"
    build_report(tmp_path / "runs", results)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.README_BEGIN}\nold\n{report.README_END}\n")
    update_readme(readme, results)
    return readme, results


def test_the_readme_block_shows_the_walkthrough_when_reproduce_saved_it(tmp_path):
    from mlic.attention import SUMMARY_FILE, write_summary
    from mlic.visualize import save_figure

    readme, results = _readme_from_one_seed(tmp_path)
    assert "Where the class queries look" not in readme.read_text()  # nothing saved: nothing

    import matplotlib.pyplot as plt

    summary = {"images": 200, "pairs": 431, "on_object": 0.4567, "chance": 0.1234,
               "above_chance": 0.8}  # fmt: skip
    assert write_summary(summary, "", weights="w") is None  # no folder: nothing written
    write_summary(summary, results, weights="checkpoint runs/x/best.pt")
    fig = plt.figure()
    for name, _ in report.WALKTHROUGH_FIGURES:
        assert save_figure(fig, results, name) == results / "figures" / f"{name}.png"
    plt.close(fig)
    update_readme(readme, results)
    text = readme.read_text()
    assert "45.7 % of its last-layer cross-attention" in text and "against 12.3 %" in text
    assert "431 (image, class) pairs" in text and "checkpoint runs/x/best.pt" in text
    assert "(results/figures/walkthrough_attention.png)" in text
    assert (results / "tables" / SUMMARY_FILE).is_file()


def test_the_results_block_links_its_images_relative_to_its_page(tmp_path, monkeypatch):
    """docs/results.md sits one folder below results/: its pictures are `../results/figures/...`,
    whether the page and the results are given as absolute paths (`mlic reproduce`) or relative
    to the working directory (`mlic report --readme docs/results.md`)."""
    from mlic.visualize import save_figure

    make_table4_runs(tmp_path / "runs", seeds=1)
    results = tmp_path / "results"
    build_report(tmp_path / "runs", results)
    import matplotlib.pyplot as plt

    fig = plt.figure()
    for name, _ in report.WALKTHROUGH_FIGURES:
        save_figure(fig, results, name)
    plt.close(fig)
    page = tmp_path / report.RESULTS_PAGE
    page.parent.mkdir()
    page.write_text(f"# Results\n\n{report.README_BEGIN}\n{report.README_END}\n")
    update_readme(page, results)
    text = page.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 2 + len(report.WALKTHROUGH_FIGURES)  # Figures 5 and 6, the walkthrough's
    for link in links:
        assert link.startswith("../results/figures/") and (page.parent / link).is_file(), link
    monkeypatch.chdir(tmp_path)
    update_readme(Path("docs") / "results.md", Path("results"))
    assert page.read_text() == text


def test_the_readme_block_names_the_pretext_runs_from_their_records(tmp_path):
    readme, results = _readme_from_one_seed(tmp_path)
    assert "Pretrained backbones" not in readme.read_text()  # no pretext record: nothing
    run_dir = results / "runs" / "pretext-resnest"
    run_dir.mkdir(parents=True)
    metrics = {"complete": True, "map": 57.4242, "epochs": 4, "best": {"epoch": 3}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    update_readme(readme, results)
    text = readme.read_text()
    assert "`pretext-resnest` (resnest14d) 57.42 % mAP after 4 epochs (best epoch 3)" in text
    assert "pretext-resnet`" not in text
