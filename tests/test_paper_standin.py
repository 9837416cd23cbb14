"""A GPU user's first hour, walked on the CPU with stand-ins: COCO 2014- and VOC 2007-shaped
archives (full layout, a few tiny images) served from 127.0.0.1 -> `mlic data coco|voc
--download` -> `mlic data check --preset paper` -> `mlic reproduce --preset paper --data-root
DIR`, shrunk by overrides, through to the tables (docs/gpu.md gives the same commands).

The notebooks run in this process, each code cell exec'd after the injected parameters as
papermill would place them, instead of in a Jupyter kernel (four kernel start-ups alone take
most of a minute on this machine); papermill's own path is tested in test_reproduce.py and the
notebooks by nbval."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from standins import coco_archives, only_localhost, serve, standin_sources, voc_archives

import mlic.reproduce as reproduce
from mlic.cli import main
from mlic.data import sources
from mlic.safeload import load_yaml

# The paper presets' model and plan, made small enough for the CPU: a one-block-per-stage
# backbone of the same timm architecture (the plan's backbone names stay, so the report knows
# the runs), a narrow head, one epoch of batches of 2, no ImageNet weights (no network).
SHRINK = [
    "model.pretrained=false",
    "model.backbone_kwargs={layers: [1, 1, 1, 1], channels: [8, 16, 32, 64], stem_width: 8}",
    "model.d_model=32",
    "model.dim_feedforward=64",
    "train.epochs=1",
    "train.batch_size=2",
    "train.eval_batch_size=8",
    "data.num_workers=0",
]


def _exec_notebook(notebook: Path, output: Path, parameters: dict, label: str) -> None:
    """papermill without a kernel: the parameters cell, then the injected values, then the rest."""
    reproduce.check_parameters(notebook, set(parameters))
    nb = nbformat.read(notebook, as_version=4)
    namespace: dict = {"__name__": "__notebook__"}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        exec(compile(cell.source, f"{notebook.name}", "exec"), namespace)  # noqa: S102
        if "parameters" in cell.metadata.get("tags", []):
            namespace.update(parameters)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"executed_in_process": label}))


@pytest.fixture(autouse=True)
def _only_localhost(monkeypatch):
    only_localhost(monkeypatch)


@pytest.mark.slow
def test_download_check_and_a_shrunk_paper_reproduction(tmp_path, monkeypatch, capsys):
    blobs = {**coco_archives(), **voc_archives()}
    data = tmp_path / "data"
    with serve(blobs) as server:
        for dataset in ("coco", "voc"):
            standin = standin_sources(dataset, server.url, blobs)
            monkeypatch.setitem(sources.ARCHIVES, dataset, standin)
        server.drop_after["train2014.zip"] = 700  # one dropped connection, resumed
        assert main(["data", "coco", "--root", str(data / "coco"), "--download"]) == 0
        assert main(["data", "voc", "--root", str(data / "voc"), "--download"]) == 0
        requests = list(server.requests)
    assert ("train2014.zip", "bytes=700-") in requests
    # The exact layout the paper presets read.
    for path in ("coco/annotations/instances_train2014.json", "coco/annotations/"
                 "instances_val2014.json", "coco/train2014", "coco/val2014",
                 "voc/VOC2007/ImageSets/Main/trainval.txt", "voc/VOC2007/ImageSets/Main/test.txt",
                 "voc/VOC2007/JPEGImages/000001.jpg"):  # fmt: skip
        assert (data / path).exists(), path
    capsys.readouterr()

    # The preflight of the whole plan: nothing missing (warnings: stand-in sizes, no weights).
    code = main(["data", "check", "--preset", "paper", "--data-root", str(data), "--set", *SHRINK])
    report = capsys.readouterr().out
    assert code == 0, report
    assert "[FAIL]" not in report and "nothing missing" in report
    assert "coco train2014: 6 images" in report and "voc test: 4 images" in report

    # The reproduction, shrunk: Tables 2 and 3 cover both datasets, both backbones, all heads.
    monkeypatch.setattr(reproduce, "execute_notebook", _exec_notebook)
    monkeypatch.chdir(reproduce.REPO_ROOT)  # the notebooks chdir there; restored afterwards
    results = tmp_path / "results"
    argv = ["reproduce", "--preset", "paper", "--data-root", str(data), "--results", str(results),
            "--only", "table2", "--only", "table3", "--set", *SHRINK]  # fmt: skip
    assert main(argv) == 0
    trained = sorted(p.name for p in (results / "runs").iterdir())
    assert trained == ["coco576-resnest-dual", "coco576-resnet-transformer",
                       "voc448-resnest-dual", "voc448-resnet-gap"]  # fmt: skip
    for name in trained:
        run = results / "runs" / name
        cfg = load_yaml(run / "config.yaml")
        dataset = "voc" if name.startswith("voc") else "coco"
        assert cfg["data"]["root"] == str(data / dataset)  # reproduce's layout: DIR/coco, DIR/voc
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["complete"] and metrics["num_images"] == 4  # the stand-in val/test split
    tables = results / "tables"
    assert (tables / "table2.md").is_file() and (tables / "table3.md").is_file()
    text = "".join(p.read_text() for p in tables.glob("*.md"))
    assert all(name in text for name in trained)  # every run reached the report

    # A rerun finds every record complete and of the same configuration: nothing retrained.
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("[skip]") == len(trained)


def test_every_command_of_the_gpu_recipe_parses():
    """docs/gpu.md is a recipe: each `mlic ...` (and `torchrun ... -m mlic ...`) line in its
    code blocks is accepted by the command line as written."""
    import shlex

    from mlic.cli import _parser

    text = (reproduce.REPO_ROOT / "docs" / "gpu.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for line in "\n".join(blocks).splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["mlic"]:
            commands.append(words[1:])
        elif words[:1] == ["torchrun"]:
            commands.append(words[words.index("mlic") + 1 :])
    assert len(commands) >= 12
    for argv in commands:
        try:
            _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"docs/gpu.md: `mlic {' '.join(argv)}` does not parse")
