"""The reproduce runner: papermill's quiet failure modes are refused, failures name the cell,
and a run is skipped only when its record is complete and made by the same configuration."""

from __future__ import annotations

import json

import nbformat
import pytest
import yaml

from mlic import pretext
from mlic.config import load_config
from mlic.data.embedded import GENERATOR_VERSION
from mlic.errors import DataError, MlicError
from mlic.plan import pretext_runs, runs
from mlic.reproduce import (
    _needs_training,
    check_parameters,
    execute_notebook,
    is_complete,
    run_overrides,
)


def _notebook(path, parameters_source: str | None, body: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    if parameters_source is not None:
        cell = nbformat.v4.new_code_cell(parameters_source)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.append(nbformat.v4.new_code_cell(body))
    nbformat.write(nb, path)
    return path


def test_unknown_parameters_and_missing_tag_are_refused(tmp_path):
    nb = _notebook(tmp_path / "a.ipynb", "epochs = 1", "print(epochs)")
    check_parameters(nb, {"epochs"})
    with pytest.raises(MlicError, match="unknown parameter.*epoch\\b"):
        check_parameters(nb, {"epoch"})
    untagged = _notebook(tmp_path / "b.ipynb", None, "epochs = 1")
    with pytest.raises(MlicError, match="exactly one cell tagged 'parameters'"):
        check_parameters(untagged, {"epochs"})


def test_a_failing_notebook_names_the_run_and_the_cell_and_is_kept(tmp_path):
    nb = _notebook(tmp_path / "c.ipynb", "value = 1", "raise ValueError(f'bad value {value}')")
    out = tmp_path / "out" / "c.ipynb"
    with pytest.raises(MlicError) as info:
        execute_notebook(nb, out, {"value": 7}, label="run demo")
    message = str(info.value)
    assert "run demo" in message and "c.ipynb" in message and "cell" in message
    assert "bad value 7" in message and str(out) in message
    assert out.is_file()  # kept for reading


def test_a_run_is_skipped_only_with_a_complete_record_of_the_same_config(tmp_path):
    run = next(r for r in runs("embedded") if r.name == "coco448-resnest-dual")
    overrides = run_overrides(run, "embedded", None, ["train.epochs=1"])
    cfg = load_config(run.preset, overrides)
    run_dir = tmp_path / run.name
    run_dir.mkdir()
    assert not is_complete(run_dir, run.preset, overrides)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    (run_dir / "metrics.json").write_text(json.dumps({"map": 1.0, "complete": False}))
    assert not is_complete(run_dir, run.preset, overrides)  # the run did not finish
    (run_dir / "metrics.json").write_text(json.dumps({"map": 1.0, "complete": True}))
    assert is_complete(run_dir, run.preset, overrides)
    changed = yaml.safe_load(cfg.to_yaml())
    changed["train"]["epochs"] = 2
    (run_dir / "config.yaml").write_text(yaml.safe_dump(changed))
    assert not is_complete(run_dir, run.preset, overrides)  # made by another configuration


def test_an_embedded_record_of_an_older_generator_is_trained_again(tmp_path, capsys):
    # Same configuration, other images: a new generator version redraws every image, and the
    # config cannot say so (the generator lives in the code), the record's metrics do.
    run = next(r for r in runs("embedded") if r.name == "coco448-resnest-dual")
    overrides = run_overrides(run, "embedded", None, [], results=tmp_path)
    run_dir = tmp_path / "runs" / run.name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(load_config(run.preset, overrides).to_yaml())

    def record(**metrics):
        (run_dir / "metrics.json").write_text(json.dumps({"map": 1.0, "complete": True, **metrics}))

    record(embedded=True, embedded_generator=GENERATOR_VERSION)
    assert is_complete(run_dir, run.preset, overrides)
    assert not _needs_training(run, overrides, tmp_path, retrain=False)
    for older in ({"embedded_generator": GENERATOR_VERSION - 1}, {}):  # {}: before the key
        record(embedded=True, **older)
        assert not is_complete(run_dir, run.preset, overrides)
    assert _needs_training(run, overrides, tmp_path, retrain=False)
    assert not run_dir.exists()
    assert f"now version {GENERATOR_VERSION}" in capsys.readouterr().out


def test_the_paper_family_needs_a_data_root():
    run = runs("paper")[0]
    with pytest.raises(MlicError, match="--data-root"):
        run_overrides(run, "paper", None, [])
    overrides = run_overrides(run, "paper", "/data", [])
    assert load_config(run.preset, overrides).data.root == "/data/coco"


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"[1, 2]", "expected a JSON object, found list"), (b'{"map": \xff}', "not valid JSON"),
     (b'{"map": 1.0,', "not valid JSON")],
)  # fmt: skip
def test_a_broken_metrics_file_stops_the_skip_check_with_its_name(tmp_path, content, message):
    # Neither a silent retrain over the record nor a traceback from deep inside reproduce.
    run = next(r for r in runs("embedded") if r.name == "coco448-resnest-dual")
    overrides = run_overrides(run, "embedded", None, [])
    run_dir = tmp_path / run.name
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(load_config(run.preset, overrides).to_yaml())
    (run_dir / "metrics.json").write_bytes(content)
    with pytest.raises(DataError) as info:
        is_complete(run_dir, run.preset, overrides)
    assert str(run_dir / "metrics.json") in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def _complete_record(results, run, overrides):
    run_dir = results / "runs" / run.name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(load_config(run.preset, overrides).to_yaml())
    (run_dir / "metrics.json").write_text(json.dumps({"map": 1.0, "complete": True}))
    return run_dir


@pytest.mark.parametrize("retrain", [False, True])
def test_retrain_trains_runs_whose_records_are_complete(tmp_path, monkeypatch, retrain):
    # A fresh clone holds complete records of every run: plain reproduce trains nothing and only
    # rebuilds the report; --retrain deletes the records and trains every planned run.
    import mlic.reproduce as reproduce

    trained, built = [], []
    monkeypatch.setattr(reproduce, "train_one", lambda name, *a: trained.append(name))
    monkeypatch.setattr(reproduce, "build_outputs", lambda *a: built.append(a))
    monkeypatch.setattr(reproduce, "ensure_embedded", lambda root: None)
    monkeypatch.setattr(reproduce.pretext, "write_backbone_weights", lambda run_dir: None)
    planned = runs("embedded", only="table4")
    dirs = [
        _complete_record(tmp_path, r, run_overrides(r, "embedded", None, [], tmp_path))
        for r in planned
    ]
    reproduce.reproduce("embedded", results=tmp_path, only=["table4"], retrain=retrain, jobs=1)
    # Retraining needs the pretext backbones first (their weight files are not committed).
    pretexts = ["pretext-resnet", "pretext-resnest"]
    assert trained == (pretexts + [r.name for r in planned] if retrain else [])
    assert all(d.exists() != retrain for d in dirs)  # records deleted before retraining
    assert len(built) == 1


def test_notebook_parameters_are_repository_relative(tmp_path, monkeypatch):
    import mlic.reproduce as reproduce

    seen = []
    monkeypatch.setattr(
        reproduce, "execute_notebook", lambda nb, out, params, label: seen.append(params)
    )
    reproduce.train_one("demo", "embedded", [], reproduce.REPO_ROOT / "results")
    reproduce.build_outputs(reproduce.REPO_ROOT / "results", "paper")
    assert seen[0]["run_dir"] == "results/runs/demo"
    assert seen[1]["results"] == seen[1]["out_dir"] == "results"
    assert seen[-1]["run_dir"] == "results/runs/coco448-resnest-dual"
    # outside the repository there is no relative form: the absolute path is kept
    reproduce.train_one("demo", "embedded", [], tmp_path)
    assert seen[-1]["run_dir"] == str((tmp_path / "runs" / "demo").resolve())


def test_executed_notebooks_name_no_machine_folder_and_no_clock_time(tmp_path):
    """papermill's recorded paths and absolute file names in warnings lose the repository root;
    the clock times of the notebook and its cells go, so executing again gives the same bytes."""
    from mlic.reproduce import REPO_ROOT, normalize_executed

    root = REPO_ROOT.as_posix()
    warning = f"{root}/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: x\n"
    nb = {
        "metadata": {
            "papermill": {
                "input_path": f"{root}/notebooks/train.ipynb",
                "output_path": f"{root}/results/executed/train-x.ipynb",
                "start_time": "2026-11-28T04:34:48.532653+00:00",
                "end_time": "2026-11-28T04:35:24.572463+00:00",
                "duration": 36.03981,
                "version": "2.7.0",
            }
        },
        "cells": [
            {
                "cell_type": "code",
                "metadata": {
                    "execution": {"iopub.execute_input": "2026-11-28T04:34:49.093357Z"},
                    "papermill": {"duration": 0.01, "start_time": "x", "status": "completed"},
                    "tags": ["parameters"],
                },
                "outputs": [{"output_type": "stream", "text": [warning]}],
            },
            {
                "cell_type": "code",
                "id": "3e598ced",
                "metadata": {"tags": ["injected-parameters"]},
                "outputs": [],
            },
            {"cell_type": "code", "outputs": [{"output_type": "stream", "text": "/elsewhere/a\n"}]},
        ],
    }
    path = tmp_path / "executed.ipynb"
    path.write_text(json.dumps(nb))
    normalize_executed(path)
    text = path.read_text()
    assert root not in text and "2026-11-28" not in text
    out = json.loads(text)
    assert out["metadata"]["papermill"] == {
        "input_path": "notebooks/train.ipynb",
        "output_path": "results/executed/train-x.ipynb",
        "version": "2.7.0",
    }
    assert out["cells"][0]["metadata"] == {
        "papermill": {"status": "completed"},
        "tags": ["parameters"],
    }
    assert out["cells"][0]["outputs"][0]["text"][0].startswith(".venv/lib/python3.11/")
    assert out["cells"][1]["id"] == "injected-parameters"  # papermill's id is random
    assert out["cells"][2]["outputs"][0]["text"] == ["/elsewhere/a\n"]  # not ours: unchanged


def test_a_cells_prints_cut_into_several_messages_are_written_as_one_output(tmp_path):
    """The kernel's flush timer cuts one cell's prints into one message or several by the
    machine's load (a fresh clone's `make reproduce` once rewrote the committed walkthrough
    that way): adjacent outputs of one stream are merged, others keep their order."""
    from mlic.reproduce import normalize_executed

    def stream(name, text):
        return {"output_type": "stream", "name": name, "text": text}

    def executed(outputs):
        path = tmp_path / "executed.ipynb"
        path.write_text(json.dumps({"metadata": {}, "cells": [{"outputs": outputs}]}))
        normalize_executed(path)
        return path.read_bytes()

    figure = {"output_type": "display_data", "data": {"text/plain": ["<Figure>"]}, "metadata": {}}
    one = executed([stream("stdout", ["a: 1\n", "b: 2\n"]), figure, stream("stdout", "c\n")])
    cut = executed(
        [
            stream("stdout", "a: "),
            stream("stdout", ["1\n", "b: 2\n"]),
            figure,
            stream("stdout", "c\n"),
        ]
    )
    assert one == cut
    outputs = json.loads(one)["cells"][0]["outputs"]
    assert [o["output_type"] for o in outputs] == ["stream", "display_data", "stream"]
    assert outputs[0]["text"] == ["a: 1\n", "b: 2\n"]
    mixed = json.loads(
        executed([stream("stdout", "x\n"), stream("stderr", "w\n"), stream("stdout", "y\n")])
    )
    assert [o["name"] for o in mixed["cells"][0]["outputs"]] == ["stdout", "stderr", "stdout"]


def test_an_interrupted_run_of_the_same_configuration_is_kept_for_the_notebook_to_resume(
    tmp_path, monkeypatch
):
    # docs/reproduce.md: "an interrupted reproduction continues where it stopped" (train.ipynb resumes
    # from the run's last checkpoint), so its directory must survive the skip check.
    import mlic.reproduce as reproduce

    trained = []
    monkeypatch.setattr(reproduce, "train_one", lambda name, *a: trained.append(name))
    monkeypatch.setattr(reproduce, "build_outputs", lambda *a: None)
    monkeypatch.setattr(reproduce, "ensure_embedded", lambda root: None)
    monkeypatch.setattr(reproduce.pretext, "write_backbone_weights", lambda run_dir: None)
    planned = runs("embedded", only="table3")
    for run in planned:
        _complete_record(tmp_path, run, run_overrides(run, "embedded", None, [], tmp_path))
    for run in pretext_runs("embedded"):  # finished, with their weight files
        run_dir = _complete_record(tmp_path, run, run_overrides(run, "embedded", None, []))
        pretext.weights_path(run_dir).parent.mkdir()
        pretext.weights_path(run_dir).write_bytes(b"weights")
    interrupted = tmp_path / "runs" / "voc448-resnest-dual"
    (interrupted / "metrics.json").unlink()
    (interrupted / "checkpoints").mkdir()
    (interrupted / "checkpoints" / "last.pt").write_bytes(b"checkpoint")
    reproduce.reproduce("embedded", results=tmp_path, only=["table3"], jobs=1)
    assert trained == ["voc448-resnest-dual"]
    assert (interrupted / "checkpoints" / "last.pt").is_file()


def test_parallel_workers_split_the_cores_and_take_the_longest_runs_first(monkeypatch):
    import mlic.reproduce as reproduce

    monkeypatch.setattr(reproduce.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert reproduce._slots(None, 2) == [{"OMP_NUM_THREADS": "2"}] * 2
    assert reproduce._slots(None, 1) == [{}]
    assert reproduce._slots(2, 1) == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert reproduce.auto_jobs("paper", None) == 1
    assert reproduce.auto_jobs("embedded", 2) == 1
    plan = runs("embedded") + runs("embedded", only="budget")
    ordered = sorted(plan, key=lambda r: -reproduce.relative_cost(r.preset, r.override_strings()))
    assert [r.name for r in ordered[:4]] == [
        "coco448-resnest-dual-2x",  # 32 epochs at 56 px
        "coco448-resnet-transformer-2x",
        "coco576-resnet-transformer",  # 16 epochs at 72 px
        "coco576-resnest-dual",
    ]


def test_reproduce_refuses_zero_jobs(tmp_path):
    import mlic.reproduce as reproduce

    with pytest.raises(MlicError, match="--jobs 0"):
        reproduce.reproduce("embedded", results=tmp_path, jobs=0)
