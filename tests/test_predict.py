"""`mlic predict`: the scores equal the evaluation's, inputs are discovered safely, skips are
listed and counted, every format is stable, and bad input fails in one line without a file."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mlic.cli import main
from mlic.data import build_dataset
from mlic.discover import discover_images
from mlic.evaluate import evaluate_checkpoint
from mlic.inference import load_trained, predict_dataset
from mlic.metrics import compute_metrics
from mlic.predict import predict_images, predicted_labels


def _mlic(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlic", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_trained(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def val_files(trained):
    return build_dataset(trained.cfg.data, "val", uint8=True).image_files


def test_predict_equals_the_evaluation_scores(tiny_run, trained, val_files):
    dataset = build_dataset(trained.cfg.data, "val", uint8=True)
    expected, targets, ignore = predict_dataset(trained.model, dataset, trained.cfg, trained.rt)
    # another batch size than the evaluation's, and the files in a shuffled order
    order = np.random.default_rng(0).permutation(len(val_files))
    got = predict_images(trained, [str(val_files[i]) for i in order], batch_size=5)
    assert [str(f) for f in got.files] == [str(val_files[i]) for i in order]
    np.testing.assert_allclose(got.scores[np.argsort(order)], expected.numpy(), rtol=0, atol=1e-6)
    # ... and they give `mlic evaluate`'s mAP for the same images
    evaluated = evaluate_checkpoint(tiny_run, device="cpu", progress=False)
    again = compute_metrics(got.scores[np.argsort(order)], targets.numpy(), ignore.numpy())
    assert again["map"] == pytest.approx(evaluated["map"], abs=1e-4)
    assert evaluated["num_images"] == len(val_files)


def test_cli_json_matches_the_python_scores(tiny_run, trained, val_files, tmp_path):
    folder = val_files[0].parent
    out = tmp_path / "p.json"
    r = _mlic("predict", str(tiny_run), *map(str, val_files[:6]), "--format", "json",
              "--out", str(out), "--device", "cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["class_names"] == trained.class_names and doc["threshold"] == 0.5
    python = predict_images(trained, val_files[:6])
    for record, row in zip(doc["images"], python.scores, strict=True):
        assert list(record["scores"]) == trained.class_names  # every class, model order
        np.testing.assert_allclose(list(record["scores"].values()), row, atol=1e-6)
        assert record["labels"] == [
            trained.class_names[c] for c in predicted_labels(row[None], 0.5)[0]
        ]
    assert "predicted 6 image(s)" in r.stderr
    assert folder.is_dir()


def test_discovery_walks_folders_globs_and_skips_what_is_not_an_image(tmp_path, val_files):
    data = tmp_path / "in"
    (data / "sub" / "deeper").mkdir(parents=True)
    for i, name in enumerate(["b.jpg", "a.png", "sub/c.JPG", "sub/deeper/d.jpeg"]):
        Image.new("RGB", (20, 16), (40 * i, 90, 10)).save(data / name)
    (data / "notes.txt").write_text("not an image")
    (data / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    os.mkfifo(data / "pipe.jpg")
    found = discover_images([data, str(tmp_path / "in" / "*.png"), tmp_path / "missing.jpg"])
    names = [f.relative_to(data).as_posix() for f in found.files]
    # sorted within the folder, each file once (a.png again via the glob is not repeated)
    assert names == ["a.png", "b.jpg", "broken.jpg", "sub/c.JPG", "sub/deeper/d.jpeg"]
    assert found.ignored_in_folders == 1
    reasons = dict(found.skipped)
    assert reasons[str(data / "pipe.jpg")] == "not a regular file"
    assert reasons[str(tmp_path / "missing.jpg")] == "no such file or folder"


def test_cli_skips_are_listed_and_counted_and_a_fifo_does_not_hang(tiny_run, tmp_path, val_files):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "p.csv"
    good = [str(f) for f in val_files[:3]]
    r = _mlic("predict", str(tiny_run), str(fifo), *good, str(broken), "--format", "csv",
              "--out", str(out), "--device", "cpu", timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"skipped {fifo}: not a regular file" in r.stderr
    assert f"skipped {broken}: not an image file" in r.stderr
    assert "predicted 3 image(s), skipped 2" in r.stderr
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0][:2] == ["image", "labels"] and len(rows[0]) == 2 + len(
        load_trained(tiny_run, device="cpu").class_names
    )
    assert [row[0] for row in rows[1:]] == good  # the order given


def test_cli_bad_inputs_fail_in_one_line_without_a_file(tiny_run, tmp_path, val_files, capsys):
    """In process (`mlic.cli.main`, what the console script runs) to keep the test fast."""
    out = tmp_path / "out.json"
    one = str(val_files[0])
    not_image = tmp_path / "x.txt"
    not_image.write_text("hello")
    cases = [
        ((str(tmp_path / "norun"), one), "no such checkpoint"),
        ((str(tiny_run), str(not_image)), "no image predicted"),
        ((str(tiny_run), str(tmp_path / "none*.jpg")), "no image predicted"),
        ((str(tiny_run), one, "--threshold", "1.5"), "[0, 1]"),
        ((str(tiny_run), one, "--top-k", "-1"), "--top-k"),
        ((str(tiny_run), one, "--thresholds", str(not_image)), "not valid JSON"),
        ((str(tiny_run), one, "--out", str(tmp_path)), "is a folder"),
    ]
    for args, needle in cases:
        code = main(["predict", *args, *([] if "--out" in args else ["--out", str(out)]),
                     "--device", "cpu"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        last = err.strip().splitlines()[-1]
        assert last.startswith("mlic: error:") and needle in last, (args, err)
        assert not out.exists() and not list(tmp_path.glob(".out.json.*")), args


def test_tuned_thresholds_top_k_and_formats(tiny_run, trained, val_files, capsys):
    from mlic.thresholds import read_thresholds, threshold_vector

    files = [str(f) for f in val_files[:5]]
    tuned = threshold_vector(read_thresholds(tiny_run / "thresholds.json", trained))
    code = main(["predict", str(tiny_run), *files, "--thresholds", "tuned", "--top-k", "2",
                 "--format", "jsonl", "--device", "cpu"])  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [rec["image"] for rec in records] == files
    for rec in records:
        scores = np.array(list(rec["scores"].values()))
        passing = [trained.class_names[c] for c in np.argsort(-scores, kind="stable")
                   if scores[c] >= tuned[c]]  # fmt: skip
        assert rec["labels"] == passing[:2]
    main(["predict", str(tiny_run), *files, "--threshold", "0", "--top-k", "1", "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"model: {tiny_run.name} (best epoch ")  # what the model knows
    assert lines[1].split()[:2] == ["image", "labels"] and len(lines) == 7
    assert all("(" in line and "," not in line.split("  ")[-1] for line in lines[2:])


def test_predict_says_what_the_model_knows_and_when_not_to_trust_it(
    tiny_run, trained, val_files, tmp_path, capsys
):
    """The run's classes and training size travel with the output; a model of the generated
    dataset, and a photo far larger than the training size, each get one line saying so."""
    from PIL import Image

    size = trained.cfg.data.image_size
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (size * 10, size * 7), (90, 120, 60)).save(photo)
    out = tmp_path / "p.json"
    assert main(["predict", str(tiny_run), str(val_files[0]), str(photo), "--format", "json",
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    model = json.loads(out.read_text())["model"]
    assert model["class_names"] == trained.class_names
    assert (model["image_size"], model["generated_data"]) == (size, True)
    assert model["run"] == tiny_run.name and model["epoch"] == trained.epoch
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"mlic: model: {tiny_run.name}") for line in err)
    cautions = [line for line in err if line.startswith("mlic: caution: ")]
    assert len(cautions) == 2
    assert "generated shapes" in cautions[0]
    assert f"1 of 2 image(s) are over 4x the {size} px" in cautions[1]
    assert f"the largest {size * 10} px" in cautions[1]
    # an image of the training size from a photo-trained run: no caution at all
    from dataclasses import replace

    from mlic.model_card import cautions as cautions_of
    from mlic.model_card import model_card

    photo_run = replace(model_card(trained), generated=False)
    assert cautions_of(photo_run, [size, 2 * size]) == []
