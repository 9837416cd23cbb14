"""Nothing a user types destroys a file it did not ask to write, and the remaining hostile-input
classes, one block per class:

1. `--out` guards (an input, a run record's file, an existing file without --force);
2. `--resume` of a finished run changes nothing, of an interrupted one adds up wall_seconds;
3. a split without labels is one error before any work;
4. thresholds.json is read like every other file (bounded, typed), evaluate still works;
5. export: --image-size bounded, a full disk is one line with no temp file left;
6. images as cameras write them (EXIF orientation), unreadable inputs reported, odd names;
7. CSV datasets: separators, missing fields, paths out of the root;
8. YAML with duplicate keys;
9. the memory bound of a batch's pixels;
10. a closed pipe on stdout ends quietly with exit 0.

A refusal is checked as in test_hardening_cli.py: exit status 2, one line naming the file, no
traceback, and the file that was there before unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN
from PIL import Image

from mlic.cli import main
from mlic.config import load_config
from mlic.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash: what "nothing changed" compares."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _refused(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (argv, captured.err)
    assert len(lines) == 1 and lines[0].startswith("mlic: error:"), (argv, captured.err)
    for needle in needles:
        assert needle in lines[0], (argv, lines[0])
    return lines[0]


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A writable copy of the session's finished tiny run."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.fixture
def image(tiny_embedded_root, tmp_path) -> Path:
    src = sorted((tiny_embedded_root / "coco" / "val2014").glob("*.jpg"))[3]
    dst = tmp_path / "photos" / "img.jpg"
    dst.parent.mkdir()
    shutil.copy(src, dst)
    return dst


# --------------------------------------------------------------------------- 1. --out guards


def test_predict_out_refuses_run_record_files_and_inputs(run_copy, image, tmp_path, capsys):
    before = _digest(run_copy)
    thresholds = tmp_path / "mine.json"
    shutil.copy(run_copy / "thresholds.json", thresholds)
    link = tmp_path / "link-to-best.pt"
    link.symlink_to(run_copy / "checkpoints" / "best.pt")
    hard = tmp_path / "hard.jpg"
    os.link(image, hard)
    base = ["predict", str(run_copy), str(image.parent), "--device", "cpu"]
    cases = [
        (["--out", str(run_copy / "history.csv")], "history.csv", "run record"),
        (["--out", str(run_copy / "checkpoints" / "last.pt")], "last.pt", "run record"),
        (["--out", str(run_copy / "checkpoints" / "new.pt")], "new.pt", "run record"),
        (["--out", str(run_copy / "config.yaml")], "config.yaml", "input"),
        (["--out", str(link)], "link-to-best.pt", "input"),  # the checkpoint, through a link
        (["--out", str(hard)], "hard.jpg", "input"),  # a hard link to an image it reads
        (["--out", str(thresholds), "--thresholds", str(thresholds)], "mine.json", "input"),
    ]
    for extra, *needles in cases:
        _refused(capsys, [*base, *extra, "--force"], *needles)  # --force does not unlock them
    assert _digest(run_copy) == before
    assert hard.read_bytes() == image.read_bytes()
    assert json.loads(thresholds.read_text())["class_names"]


def test_out_replaces_an_existing_file_only_with_force(run_copy, image, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    argv = ["predict", str(run_copy), str(image), "--device", "cpu", "--out", str(notes)]
    _refused(capsys, argv, "notes.txt", "--force")
    assert notes.read_text() == "mine\n"
    assert main([*argv, "--force"]) == 0
    assert notes.read_text().splitlines()[1].startswith("image")  # after the model line
    fresh = tmp_path / "fresh.csv"  # a new file needs no --force
    assert main([*argv[:-1], str(fresh), "--format", "csv"]) == 0 and fresh.is_file()
    capsys.readouterr()


def test_export_and_calibrate_out_guards(run_copy, tmp_path, tiny_embedded_root, capsys):
    before = _digest(run_copy)
    other = tmp_path / "other-run"
    shutil.copytree(run_copy, other)
    for argv, needle in [
        # the spec beside it would be <run>/metrics.json
        (["export", str(run_copy), "--out", str(run_copy / "metrics")], "metrics.json"),
        (["export", str(run_copy), "--out", str(run_copy / "config.yaml")], "config.yaml"),
        (["calibrate", str(run_copy), "--out", str(run_copy / "checkpoints" / "best.pt")],
         "best.pt"),
        (["calibrate", str(run_copy), "--out", str(other / "thresholds.json")], "other-run"),
    ]:  # fmt: skip
        _refused(capsys, [*argv, "--force"], needle)
    data = tmp_path / "data"
    shutil.copytree(tiny_embedded_root / "coco", data)
    annotations = data / "annotations" / "instances_val2014.json"
    text = annotations.read_text()
    _refused(
        capsys,
        ["calibrate", str(run_copy), "--data-root", str(data), "--out", str(annotations),
         "--force", "--device", "cpu"],
        "instances_val2014.json", "input",
    )  # fmt: skip
    assert annotations.read_text() == text
    assert _digest(run_copy) == before and _digest(other) == before
    # The command's own default outputs are replaced as before, without --force.
    assert main(["calibrate", str(run_copy), "--device", "cpu"]) == 0
    assert main(["calibrate", str(run_copy), "--device", "cpu"]) == 0
    capsys.readouterr()


def test_to_csv_out_never_overwrites_its_input(tmp_path, capsys):
    root = tmp_path / "ds"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "img" / "a.png")
    rows = "image,labels\nimg/a.png,cat\n"
    (root / "train.csv").write_text(rows)
    _refused(
        capsys,
        ["data", "to-csv", "--dataset", "csv", "--root", str(root), "--split", "train",
         "--out", str(root / "train.csv"), "--force"],
        "train.csv", "input",
    )  # fmt: skip
    assert (root / "train.csv").read_text() == rows


def test_force_is_documented_in_help(capsys):
    for command in ("predict", "calibrate", "export"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--force" in capsys.readouterr().out, command


def test_check_out_unit_cases(tmp_path):
    from mlic.outputs import OutError, check_out, run_record_file

    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\n")
    assert run_record_file(run / "iterations.csv") == run.resolve()
    assert run_record_file(run / "checkpoints" / "epoch3.pt") == run.resolve()
    assert run_record_file(tmp_path / "metrics.json") is None  # not inside a run directory
    folder = tmp_path / "voc"
    (folder / "JPEGImages").mkdir(parents=True)
    with pytest.raises(OutError, match="input"):  # a folder among the inputs: all inside it
        check_out(folder / "JPEGImages" / "new.csv", inputs=[folder])
    assert check_out(tmp_path / "new.csv", inputs=[folder]) == tmp_path / "new.csv"
    owned = run / "thresholds.json"
    owned.write_text("{}")
    assert check_out(owned, owned=[owned]) == owned  # a command's own default output


# --------------------------------------------------------------------------- 2. --resume


def test_resume_of_a_finished_run_changes_nothing(run_copy, capsys):
    from mlic.fit import fit
    from mlic.inference import load_trained
    from mlic.thresholds import calibrate, thresholds_path

    # Thresholds chosen on another split must survive a resume.
    trained = load_trained(run_copy, device="cpu")
    calibrate(trained, split="train2014")
    before = _digest(run_copy)
    cfg = load_config(path=run_copy / "config.yaml")
    metrics = fit(cfg, run_copy, resume=True, progress=False)
    assert _digest(run_copy) == before
    assert metrics == json.loads((run_copy / "metrics.json").read_text())
    assert "finished already" in capsys.readouterr().err
    # A kill between metrics.json and thresholds.json: the resume writes only what is missing.
    thresholds_path(run_copy).unlink()
    fit(cfg, run_copy, resume=True, progress=False)
    after = _digest(run_copy)
    assert thresholds_path(run_copy).is_file()
    del after["thresholds.json"], before["thresholds.json"]
    assert after == before
    capsys.readouterr()


def test_resume_adds_the_wall_seconds_before_the_interruption(
    tiny_embedded_root, tmp_path, monkeypatch
):
    import mlic.fit as fitting
    from mlic.checkpoint import load_checkpoint
    from mlic.runstate import wall_seconds_before

    cfg = load_config(
        "embedded", [*TINY_RUN, "train.epochs=3", f"data.embedded_root={tiny_embedded_root}"]
    )
    real = fitting.train_one_epoch
    calls = {"n": 0}

    def dies_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fitting, "train_one_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        fitting.fit(cfg, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    before, epochs = state["wall_seconds"], sum(row["seconds"] for row in state["history"])
    assert before >= epochs > 0  # two epochs with their evaluations
    monkeypatch.setattr(fitting, "train_one_epoch", real)
    metrics = fitting.fit(cfg, tmp_path, resume=True, progress=False)
    assert metrics["wall_seconds"] > before  # the first session's time plus this one's
    assert wall_seconds_before({"history": [{"seconds": 2.5}, {"seconds": 1.5}]}) == 4.0


# --------------------------------------------------------------------------- 3. no labels


def test_a_split_without_labels_is_one_error_before_any_work(
    tiny_embedded_root, tiny_run, tmp_path, monkeypatch, capsys
):
    import mlic.fit as fitting

    data = tmp_path / "coco"
    shutil.copytree(tiny_embedded_root / "coco", data)
    path = data / "annotations" / "instances_val2014.json"
    doc = json.loads(path.read_text())
    doc["annotations"] = []
    path.write_text(json.dumps(doc))

    def no_epoch(*args, **kwargs):
        raise AssertionError("an epoch started")

    monkeypatch.setattr(fitting, "train_one_epoch", no_epoch)
    cfg = load_config("embedded", [*TINY_RUN, f"data.root={data}"])
    with pytest.raises(DataError, match="val2014.*no labels"):
        fitting.fit(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "history.csv").exists()
    _refused(capsys, ["evaluate", str(tiny_run), "--data-root", str(data), "--device", "cpu"],
             "instances_val2014.json", "no labels")  # fmt: skip
    out = tmp_path / "t.json"
    _refused(capsys, ["calibrate", str(tiny_run), "--data-root", str(data), "--out", str(out),
                      "--device", "cpu"], "no labels")  # fmt: skip
    assert not out.exists()


def test_voc_split_of_difficult_objects_only_has_no_labels(make_voc):
    from mlic.data import read_split
    from mlic.data.checks import require_labels

    root = make_voc({"000001": [("cat", 1, (1, 1, 20, 20))], "000002": [("dog", 1, (2, 2, 9, 9))]},
                    classes=["cat", "dog"])  # fmt: skip
    with pytest.raises(DataError, match="no labels"):
        require_labels(read_split("voc", root, "test"), "evaluate a model")


# --------------------------------------------------------------------------- 4. thresholds.json


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.update(chosen_on=["val"]), "chosen_on"),
        (lambda d: d["chosen_on"].pop("description"), "chosen_on.description"),
        (lambda d: d.pop("format"), "not an mlic thresholds file"),
        (lambda d: d["thresholds"].update({d["class_names"][2]: "0.4"}), "not a number"),
        (lambda d: d["thresholds"].update({d["class_names"][1]: -0.25}), "not a number"),
        (lambda d: d["thresholds"].update({d["class_names"][0]: float("inf")}), "not a number"),
        (lambda d: d["thresholds"].pop(d["class_names"][3]), "no threshold"),
        (lambda d: d.update(class_names=d["class_names"] + d["class_names"][:1]), "twice"),
        (lambda d: d.update(class_names="red-circle"), "class_names"),
        (lambda d: d["checkpoint"].update(file=7), "checkpoint.file"),
        (lambda d: d.update(rule=json.loads("[" * 12 + "]" * 12)), "nested deeper"),
    ],
)
def test_bad_thresholds_json_is_ignored_by_evaluate_and_refused_by_predict(
    run_copy, image, change, needle, capsys
):
    path = run_copy / "thresholds.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    assert main(["evaluate", str(run_copy), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "tuned thresholds not used:" in out and needle in out and "CP " in out
    _refused(capsys, ["predict", str(run_copy), str(image), "--thresholds", "tuned",
                      "--device", "cpu"], "thresholds.json", needle)  # fmt: skip


def test_thresholds_json_size_and_kind_are_bounded(run_copy, monkeypatch):
    import mlic.thresholds as thresholds
    from mlic.evaluate import evaluate_checkpoint
    from mlic.inference import load_trained

    trained = load_trained(run_copy, device="cpu")
    path = run_copy / "thresholds.json"
    monkeypatch.setattr(thresholds, "MAX_THRESHOLDS_BYTES", 1024)
    with pytest.raises(thresholds.ThresholdsError, match="over the limit"):
        thresholds.read_thresholds(path, trained)
    path.unlink()
    os.mkfifo(path)  # never opened for reading: it would block
    metrics = evaluate_checkpoint(run_copy, device="cpu")
    assert "FIFO" in metrics["tuned"]["unavailable"]


# --------------------------------------------------------------------------- 5. export


def test_export_image_size_is_bounded(tiny_run, tmp_path, capsys):
    for size, needle in (("4096", "<= 2048"), ("0", ">= 32"), ("-64", ">= 32")):
        out = tmp_path / f"m{size}.pt"
        _refused(capsys, ["export", str(tiny_run), "--format", "torchscript", "--image-size",
                          size, "--out", str(out)], "--image-size", needle)  # fmt: skip
        assert not out.exists()


_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
from mlic.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_to_a_full_disk_is_one_line_and_leaves_nothing(tiny_run, tmp_path, fmt):
    pytest.importorskip("onnxscript") if fmt == "onnx" else None
    out = tmp_path / "out" / "model.bin"
    r = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, "export", str(tiny_run), "--format", fmt,
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0] == f"mlic: error: {out}: cannot write (File too large)"
    assert list(out.parent.iterdir()) == []  # no model, no spec, no temp file


# --------------------------------------------------------------------------- 6. images


def _exif_jpeg(path: Path, pixels: np.ndarray, orientation: int | None) -> None:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(path, format="JPEG", quality=100, exif=exif.tobytes())


def test_exif_orientation_is_applied_wherever_images_are_decoded(tmp_path):
    from mlic.data.base import MultiLabelDataset
    from mlic.data.images import open_rgb
    from mlic.data.records import ObjectTable, SplitIndex

    rng = np.random.default_rng(3)
    upright = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    upright[:, :8] = 255  # a bright left edge, to see where it goes
    # Orientation 3: the stored pixels are upside down, a viewer turns them by 180 degrees.
    _exif_jpeg(tmp_path / "turned.jpg", np.ascontiguousarray(upright[::-1, ::-1]), 3)
    _exif_jpeg(tmp_path / "plain.jpg", upright, None)
    a = np.asarray(open_rgb(tmp_path / "turned.jpg"), dtype=np.int16)
    b = np.asarray(open_rgb(tmp_path / "plain.jpg"), dtype=np.int16)
    assert a.shape == b.shape and np.abs(a - b).mean() < 3  # JPEG noise only
    # Orientation 8: stored turned clockwise, a viewer turns it back; through the dataset too
    # (training and evaluation read images there).
    _exif_jpeg(tmp_path / "side.jpg", np.ascontiguousarray(np.rot90(upright, -1)), 8)
    side = np.asarray(open_rgb(tmp_path / "side.jpg"), dtype=np.int16)
    assert side.shape == b.shape and np.abs(side - b).mean() < 3
    index = SplitIndex("csv", "x", tmp_path, ["c"], np.array([str(tmp_path / "side.jpg")]),
                       np.ones((1, 1), np.float32), np.zeros((1, 1), bool),
                       np.zeros((1, 2), np.int64), ObjectTable.from_rows([]))  # fmt: skip
    item = MultiLabelDataset(index, lambda im: np.asarray(im))[0][0]
    assert item.shape == (24, 40, 3)


def test_exif_orientation_in_predict(trained_and_files, tmp_path):
    from mlic.predict import predict_images

    trained, source = trained_and_files
    pixels = np.asarray(Image.open(source).convert("RGB"))
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    image = Image.fromarray(np.ascontiguousarray(np.rot90(pixels, 1)))
    exif = image.getexif()
    exif[0x0112] = 6  # stored turned anticlockwise; a viewer turns it clockwise
    image.save(tmp_path / "turned.png", exif=exif.tobytes())
    got = predict_images(trained, [tmp_path / "plain.png", tmp_path / "turned.png"])
    np.testing.assert_allclose(got.scores[0], got.scores[1], atol=1e-5)


@pytest.fixture(scope="module")
def trained_and_files(tiny_run, tiny_embedded_root):
    from mlic.inference import load_trained

    return (
        load_trained(tiny_run, device="cpu"),
        sorted((tiny_embedded_root / "coco" / "val2014").glob("*.jpg"))[5],
    )


def test_unreadable_folders_and_files_are_reported_with_a_reason(image, tmp_path, monkeypatch):
    from mlic.discover import discover_images

    locked = image.parent / "locked"
    locked.mkdir()
    shutil.copy(image, locked / "x.jpg")
    real_scandir, real_stat = os.scandir, os.stat

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    def stat(path, *args, **kwargs):
        if Path(path).parent == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "stat", stat)
    found = discover_images([image.parent, locked / "x.jpg", locked])
    reasons = dict(found.skipped)
    assert found.files == [image]
    assert reasons[str(locked)] == "cannot read (Permission denied)"
    assert reasons[str(locked / "x.jpg")] == "cannot read (Permission denied)"


@pytest.mark.skipif(
    os.geteuid() == 0 and not shutil.which("setpriv"), reason="root reads everything"
)
def test_unreadable_paths_for_real(image, tmp_path):
    """With real permissions (as root: without the capabilities that bypass them)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(image, locked / "x.jpg")
    closed = tmp_path / "closed.jpg"
    shutil.copy(image, closed)
    code = (
        "import sys; from mlic.discover import discover_images; "
        "f = discover_images(sys.argv[1:]); print(f.files); print(dict(f.skipped))"
    )
    prefix = (
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    )
    try:
        locked.chmod(0)
        closed.chmod(0)
        argv = [
            *prefix,
            sys.executable,
            "-c",
            code,
            str(locked),
            str(locked / "x.jpg"),
            str(closed),
        ]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o755)
        closed.chmod(0o644)
    assert r.returncode == 0, r.stderr
    assert f"'{locked}': 'cannot read (Permission denied)'" in r.stdout
    assert f"'{locked / 'x.jpg'}': 'cannot read (Permission denied)'" in r.stdout
    assert str(closed) in r.stdout.splitlines()[0]  # readable to list; decoding reports it


def test_control_characters_in_file_names_keep_one_row_per_image(run_copy, image, capsys):
    odd = [image.parent / "two\nlines.jpg", image.parent / "tab\tand\rcr.jpg"]
    for path in odd:
        shutil.copy(image, path)
    assert main(["predict", str(run_copy), str(image.parent), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 3  # the model line, the header and one row per image
    assert any(line.startswith(str(image.parent / "two\\nlines.jpg")) for line in lines)
    assert main(["predict", str(run_copy), str(image.parent), "--format", "csv"]) == 0
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(r["image"] for r in rows) == sorted(map(str, [image, *odd]))


# --------------------------------------------------------------------------- 7. CSV datasets


@pytest.fixture
def csv_root(tmp_path) -> Path:
    root = tmp_path / "ds"
    (root / "pics").mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.new("RGB", (10, 10), (40, 90, 200)).save(root / "pics" / f"{name}.png")
    (root / "train.csv").write_text("image,labels\npics/a.png,bird|fish\npics/b.png,fish\n")
    return root


@pytest.mark.parametrize(
    ("val", "line", "needle"),
    [
        ('image,labels\npics/c.png,fish\npics/a.png,"bird, fish"\n', 3, "separated by ','"),
        ("image,labels\npics/c.png,bird;fish\n", 2, "separated by ';'"),
        ("image,labels\npics/c.png,bird,fish\n", 2, "3 fields"),
        ("image,labels\npics/a.png,fish\npics/c.png\n", 3, "no labels field"),
        ("image,labels\npics/../../ds/pics/c.png,fish\n", 2, "'..'"),
        ("image,labels\n{outside},fish\n", 2, "absolute path outside"),
    ],
)
def test_csv_typos_that_would_change_labels_are_errors(csv_root, tmp_path, val, line, needle):
    from mlic.data.csv_dataset import read_csv_split

    outside = tmp_path / "outside.png"
    Image.new("RGB", (10, 10)).save(outside)
    (csv_root / "val.csv").write_text(val.format(outside=outside))
    with pytest.raises(DataError, match=f"val.csv, line {line}: .*{needle}"):
        read_csv_split(csv_root, "val")


def test_csv_strictness_has_no_false_alarms(csv_root):
    from mlic.data.csv_dataset import read_csv_split

    # A class whose name has a comma is fine once classes.txt lists it; an absolute path inside
    # the root and a '..' that stays inside are fine too.
    (csv_root / "classes.txt").write_text("bird\nfish\nhot dog, with mustard\n")
    (csv_root / "val.csv").write_text(
        f'image,labels,note\n{csv_root / "pics" / "c.png"},"hot dog, with mustard",x\n'
        "pics/../pics/b.png,fish,\n"
    )
    index = read_csv_split(csv_root, "val")
    assert index.targets.tolist() == [[0, 0, 1], [0, 1, 0]]
    (csv_root / "classes.txt").unlink()
    (csv_root / "train.csv").write_text("image,labels\npics/a.png,bird;fish\n")
    with pytest.raises(DataError, match="train.csv, line 2: .*separated by ';'"):
        read_csv_split(csv_root, "train")


# --------------------------------------------------------------------------- 8. YAML


def test_yaml_with_duplicate_keys_is_refused(tmp_path, capsys):
    cfg = load_config("embedded", TINY_RUN)
    text = cfg.to_yaml()
    doubled = text.replace("train:\n", "train:\n  seed: 7\n", 1)  # seed appears again below
    path = tmp_path / "config.yaml"
    path.write_text(doubled)
    line = _refused(capsys, ["train", "--config", str(path), "--run-dir", str(tmp_path / "r")],
                    "config.yaml", "duplicate key 'seed'")  # fmt: skip
    assert "line" in line and not (tmp_path / "r").exists()
    path.write_text(text + "model:\n  d_model: 64\n")  # a whole section twice
    with pytest.raises(ConfigError, match="duplicate key 'model'"):
        load_config(path=path)
    path.write_text(text.replace("name: ", "name: {a: 1, a: 2}\nx: ", 1))
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_config(path=path)


# --------------------------------------------------------------------------- 9. memory


def test_batch_pixels_are_bounded_before_anything_allocates(tiny_run, image, capsys):
    cpu = ["train.device=cpu"]
    with pytest.raises(ConfigError, match=r"M pixels .*GB"):
        load_config("embedded", [*cpu, "data.image_size=1536"])  # 32 images: 75 M pixels
    with pytest.raises(ConfigError, match="train.eval_batch_size=2048"):
        load_config("embedded", [*cpu, "data.image_size=320", "train.eval_batch_size=2048"])
    ok = load_config("embedded", [*cpu, "data.image_size=1536", "train.batch_size=4",
                                  "train.eval_batch_size=16"])  # fmt: skip
    assert ok.data.image_size == 1536
    with pytest.raises(ConfigError, match="accumulation_steps"):  # the error says the way out
        load_config("embedded", [*cpu, "data.image_size=1024"])
    for preset in ("paper-coco-448", "paper-coco-576", "paper-voc-448"):
        load_config(preset, cpu)  # the paper's batches stay within the bound
    # On a GPU the card's memory decides: the paper's batch 128 at 448 px is a configuration
    # (measured on one H200), refused only where it would run on the CPU.
    load_config("paper-coco-448", ["train.batch_size=128"])
    with pytest.raises(ConfigError, match="M pixels"):
        load_config("paper-coco-448", [*cpu, "train.batch_size=128"])
    if not torch.cuda.is_available():  # device auto is checked once it resolves to the CPU
        from mlic.runtime import make_runtime

        with pytest.raises(ConfigError, match="on the CPU, .*M pixels"):
            make_runtime(load_config("embedded", ["data.image_size=1536"]))
        _refused(capsys, ["train", "--set", "data.image_size=2048", "--run-dir",
                          str(tiny_run.parent / "never")], "M pixels")  # fmt: skip
        assert not (tiny_run.parent / "never").exists()  # refused before anything was written
    _refused(capsys, ["predict", str(tiny_run), str(image), "--batch-size", "200000",
                      "--device", "cpu"], "--batch-size", "M pixels")  # fmt: skip


# --------------------------------------------------------------------------- 10. closed pipe


@pytest.mark.parametrize(
    "args",
    [
        ["presets"],
        ["data", "stats", "--dataset", "coco", "--root", "{coco}", "--split", "val2014"],
        ["evaluate", "{run}", "--json", "--device", "cpu"],
        ["predict", "{run}", "{coco}/val2014", "--device", "cpu"],
    ],
    ids=["presets", "data-stats", "evaluate-json", "predict"],
)
def test_a_closed_pipe_on_stdout_ends_quietly(tiny_run, tiny_embedded_root, args):
    """What `mlic ... | head` does once head has left: every write gets EPIPE."""
    argv = [a.format(run=tiny_run, coco=tiny_embedded_root / "coco") for a in args]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        r = subprocess.run([sys.executable, "-m", "mlic", *argv], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, timeout=300, cwd=REPO)  # fmt: skip
    finally:
        os.close(write_end)
    assert r.returncode == 0, r.stderr
    assert "Broken pipe" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_errors_still_exit_2_under_the_pipe_handler(capsys):
    _refused(capsys, ["evaluate", "/nonexistent/run"], "/nonexistent/run")
