"""Hostile and faulty input through the real command line, one test per class:

1. values of the wrong type or range (configuration, YAML, COCO JSON, checkpoints, a run
   directory's files, faults while writing);
2. data that must be refused or counted (paths out of the image folder, bad boxes, sizes);
3. hangs (a FIFO where a file should be);
4. a run record destroyed by a new run;
5. the smaller things (the malicious-pickle line, the umask, one key per message, the lock's PID).

Each refusal is checked the same way: exit status 2, exactly one line on stderr naming the file
or key, no traceback, a timeout (so a hang fails the test), and no change to an existing run record.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mlic.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.image_size=32",
    "data.num_workers=0",
    "data.max_train_images=16",
    "data.max_val_images=8",
    "model.d_model=32",
    "model.dim_feedforward=64",
    "train.batch_size=8",
    "train.eval_batch_size=8",
    "train.epochs=1",
    "train.device=cpu",
]


def mlic(*args: str, cwd: Path, timeout: float = 120, umask: int | None = None, code: str = ""):
    """Run `python -m mlic ARGS` (or `python -c CODE ARGS`, for an injected fault) in `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "mlic"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def refused(proc: subprocess.CompletedProcess, *named: str) -> str:
    """Exit status 2, one line on stderr that names each of `named`, no traceback."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert err.endswith("\n") and err.count("\n") == 1, err[-3000:]
    assert err.startswith("mlic: error: "), err
    for name in named:
        assert name in err, (name, err)
    assert len(err) < 600, err
    return err


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` (but the lock) with its bytes and mtime: a run record must
    not change."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# Several commands in one process (torch is imported once), each with an optional injected
# fault; the process exits 2 when every command did. argv[1]: JSON [[fault or "", args], ...].
MANY = """
import errno, json, os, sys
import mlic.evaluate, mlic.fit  # noqa: F401 - imported before any fault, as in a real run
from mlic.cli import main
real_open, real_fsync = os.open, os.fsync
def inject(name):
    code = getattr(errno, name)
    def fsync(fd):  # a full disk shows at the flush
        raise OSError(code, os.strerror(code))
    def open_(path, *args, **kwargs):  # a read-only or forbidden folder shows at the create
        if str(path).endswith(".tmp"):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)
    os.fsync, os.open = (fsync, real_open) if name == "ENOSPC" else (real_fsync, open_)
codes = []
for fault, args in json.loads(sys.argv[1]):
    os.fsync, os.open = real_fsync, real_open
    if fault.startswith("umask="):
        os.umask(int(fault[6:], 8))
    elif fault:
        inject(fault)
    codes.append(main(args))
raise SystemExit(2 if set(codes) == {2} else 99)
"""


def mlic_many(commands: list[tuple[str, list[str]]], cwd: Path, timeout: float = 240):
    """Run the commands in one process; returns the stderr lines (each checked as a refusal)."""
    proc = mlic(json.dumps(commands), cwd=cwd, code=MANY, timeout=timeout)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == len(commands), proc.stderr[-3000:]
    assert all(line.startswith("mlic: error: ") and len(line) < 600 for line in lines), lines
    return lines


# --------------------------------------------------------------------------- 1. configuration


@pytest.mark.parametrize(
    ("override", "named", "not_named"),
    [
        ("train.lr=-1", "train.lr", ""),
        ("train.lr=.nan", "train.lr", ""),
        ("model.nhead=0", "model.nhead", ""),
        ("model.d_model=30", "model.nhead", ""),  # 30 % 4: the relation names both keys
        ("train.div_factor=0", "train.div_factor", ""),
        ("data.num_workers=-1", "data.num_workers", ""),
        ("train.device=tpu9", "train.device", ""),
        ("train.batch_size=0", "train.batch_size=0", "eval_batch_size"),
        ("data.image_size=100000", "2048", ""),  # the message says the limit
        ("train.seed=99999999999999999999999", "train.seed", ""),
        ("name=../../escape", "name", ""),
        ("data.val_split=../train2014", "data.val_split", ""),
        ("data.mean=[&a [1], *a]", "data.mean", ""),  # an alias on the command line
        ("model.backbone_kwargs={channels: [64, 64, 64, 1000000000]}", "backbone_kwargs", ""),
    ],
)
def test_configuration_values_out_of_range_are_refused(tmp_path, override, named, not_named):
    err = refused(mlic("train", "--set", override, "--run-dir", "run", cwd=tmp_path), named)
    assert not not_named or not_named not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


DEEP_YAML = "a: " + "[" * 5000 + "]" * 5000 + "\n"
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (DEEP_YAML, "limit of 64"),
        (ALIAS_BOMB, "aliases"),
        ("model:\n  d_model: 32\n  nhead: [unclosed\ntrain: {}\n", "line 4"),
        (os.urandom(3000), "cfg.yaml"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
        ("- a list\n- not a mapping\n", "mapping"),
        ("model:\n  d_model: {a: 1}\n", "model.d_model"),
    ],
    ids=["deep", "alias-bomb", "syntax", "random", "binary", "list", "wrong-type"],
)
def test_bad_configuration_files_are_refused_in_one_line(tmp_path, text, named):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    proc = mlic("train", "--config", str(path), "--run-dir", "run", cwd=tmp_path, timeout=60)
    refused(proc, "cfg.yaml", named)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 1. COCO annotations


def coco_tree(root: Path, data: dict | str | bytes, split: str = "val2014") -> Path:
    """A COCO tree with `data` as the annotation file and a small JPEG per named image."""
    from PIL import Image

    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    if isinstance(data, dict):
        for im in data.get("images", []):
            name = im.get("file_name")
            if isinstance(name, str) and "/" not in name:
                Image.new("RGB", (40, 30), (200, 100, 50)).save(root / split / name)
        data = json.dumps(data)
    payload = data if isinstance(data, bytes) else data.encode()
    (root / "annotations" / f"instances_{split}.json").write_bytes(payload)
    return root


def coco(images=None, annotations=None, categories=None, **extra) -> dict:
    base = {
        "images": images if images is not None else [
            {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30},
        ],
        "categories": categories or [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
        ],
    }  # fmt: skip
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def stats(root: Path, cwd: Path, *extra: str, dataset: str = "coco", split: str = "val2014"):
    return mlic(
        "data", "stats", "--dataset", dataset, "--root", str(root), "--split", split, *extra,
        cwd=cwd, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (coco(images=[{"id": [1], "file_name": "a.jpg"}]), "images[0].id"),
        (coco(images=[{"id": 1, "file_name": None}]), "images[0].file_name"),
        (coco(images=[{"id": 1, "file_name": "a.jpg", "width": 1e300}]), "images[0].width"),
        (coco(annotations=[{"id": 1, "image_id": [1], "category_id": 1}]),
         "annotations[0].image_id"),
        (coco(annotations=[{"id": 1, "image_id": 1, "category_id": "1"}]),
         "annotations[0].category_id"),
        (coco(annotations=[{"image_id": 1, "category_id": 1}]), "annotations[0] lacks"),
        (coco(categories=[{"id": 1, "name": {"x": 1}}]), "categories[0].name"),
        ({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "a"}]},
         "'annotations' is missing"),
        ("[" * 30_000_000, "limit of 64"),  # 30 MB of nesting: refused after one chunk
        ('{"images": [1, 2', "not valid JSON"),
        ('{"images": [{"id": ' + "7" * 5000 + "}]}", "not valid JSON"),  # > 4300 digits
        (b'{"images": \xff}', "not valid JSON"),
    ],
    ids=["id-list", "file-name-null", "huge-width", "image-id-list", "category-id-str",
         "annotation-without-id", "name-dict", "no-annotations", "deep", "truncated", "huge-int", "not-utf8"],
)  # fmt: skip
def test_coco_fields_of_the_wrong_type_are_refused(tmp_path, data, named):
    root = coco_tree(tmp_path / "coco", data)
    refused(stats(root, tmp_path), "instances_val2014.json", named)


@pytest.mark.parametrize(
    ("file_name", "reason"),
    [
        ("../train2014/a.jpg", "leaves the split's image folder"),
        ("sub/../../../etc/passwd", "leaves the split's image folder"),
        ("/etc/passwd", "absolute"),
    ],
)
def test_file_names_that_leave_the_image_folder_are_refused(tmp_path, file_name, reason):
    data = coco(images=[{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": file_name}])
    root = coco_tree(tmp_path / "coco", data)
    refused(stats(root, tmp_path), "instances_val2014.json", reason)


def test_too_many_label_entries_are_refused_before_allocating(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(17_000)]
    categories = [{"id": i, "name": f"c{i}"} for i in range(17_000)]
    root = coco_tree(tmp_path / "coco", json.dumps(coco(images, [], categories)))
    refused(stats(root, tmp_path), "instances_val2014.json", "over the limit")


def test_bad_boxes_are_counted_and_reported_without_warnings(tmp_path):
    bad = [[1, 1, -5, 10], [1, 1, 0, 10], [1, 1, 1e300, 1e300], ["a", 1, 2, 3], [1, 2, 3],
           [1, 1, 1e400, 5], [-3, 1, 5, 5]]  # fmt: skip
    annotations = [{"image_id": 1, "category_id": 1, "bbox": b} for b in bad]
    annotations += [
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 4, 3]},  # fine
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 4, 3], "area": float("nan")},
        {"image_id": 2, "category_id": 1, "area": 1e308},
    ]
    annotations = [{"id": i, **a} for i, a in enumerate(annotations)]
    # json.dumps writes NaN/Infinity (as Python's json reads them); 1e400 overflows to Infinity.
    root = coco_tree(tmp_path / "coco", json.dumps(coco(annotations=annotations)))
    proc = stats(root, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    out = json.loads(proc.stdout)
    assert out["invalid_boxes"] == 9 and out["num_objects"] == 10
    assert out["positives_per_class"] == {"cat": 2, "dog": 1}  # the labels still count
    assert "9 annotation(s) have an unusable bbox" in proc.stderr  # reported, one line
    assert proc.stderr.count("\n") == 1


def test_bad_voc_boxes_are_counted_and_bad_sizes_refused(tmp_path):
    voc = tmp_path / "voc" / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (voc / sub).mkdir(parents=True)

    def box(x0, y0, x1, y1):
        return (
            f"<object><name>dog</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )

    objects = [box(1, 1, 5, 5), box("nan", 1, 5, 5), box(-4, 1, 5, 5), box(9, 9, 2, 2),
               box(1, 1, 1e300, 1e300), box("x", 1, 2, 2)]  # fmt: skip
    size = "<size><width>40</width><height>30</height></size>"
    (voc / "Annotations" / "a.xml").write_text(f"<annotation>{size}{''.join(objects)}</annotation>")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    proc = stats(voc.parent, tmp_path, dataset="voc", split="test")
    assert proc.returncode == 0 and "Warning" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["invalid_boxes"] == 5

    huge = "<size><width>1e300</width><height>30</height></size>"
    (voc / "Annotations" / "a.xml").write_text(f"<annotation>{huge}{objects[0]}</annotation>")
    refused(stats(voc.parent, tmp_path, dataset="voc", split="test"), "a.xml", "<size>")


# --------------------------------------------------------------------------- 3. FIFOs


def test_fifos_where_files_should_be_are_refused_not_waited_on(tmp_path):
    data = coco(images=[{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "fifo.jpg"}])
    root = coco_tree(tmp_path / "coco", data)
    (root / "val2014" / "fifo.jpg").unlink()
    os.mkfifo(root / "val2014" / "fifo.jpg")
    proc = stats(root, tmp_path, "--verify")  # verify decodes every image: must not block
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["unreadable"] == ["fifo.jpg"]

    os.mkfifo(tmp_path / "cfg.yaml")
    proc = mlic("train", "--config", "cfg.yaml", "--run-dir", "run", cwd=tmp_path, timeout=30)
    refused(proc, "cfg.yaml", "FIFO")
    other = coco_tree(tmp_path / "other", coco())
    (other / "annotations" / "instances_val2014.json").unlink()
    os.mkfifo(other / "annotations" / "instances_val2014.json")
    refused(stats(other, tmp_path), "instances_val2014.json", "FIFO")


def test_a_fifo_image_is_skipped_in_training_and_an_error_in_evaluation(tmp_path):
    from mlic.data import MultiLabelDataset, make_transforms, read_coco

    root = coco_tree(tmp_path / "coco", coco())
    (root / "val2014" / "b.jpg").unlink()
    os.mkfifo(root / "val2014" / "b.jpg")
    index = read_coco(root, "val2014")
    train = MultiLabelDataset(index, make_transforms(32, train=True), skip_unreadable=True)
    assert train[0] is not None and train[1] is None  # skipped (and counted by the collate)

    cfg = load_config("embedded", [*TINY, f"data.root={root}"])
    make_checkpoint(tmp_path / "model.pt", cfg, ["cat", "dog"])
    proc = mlic("evaluate", "model.pt", "--device", "cpu", cwd=tmp_path, timeout=180)
    refused(proc, "b.jpg", "FIFO")


# --------------------------------------------------------------------------- 1/5. checkpoints


def make_checkpoint(path: Path, cfg, class_names: list[str], drop=(), **extra) -> None:
    """A checkpoint as the engine writes it (untrained weights), minus `drop`, plus `extra`."""
    from mlic.checkpoint import save_checkpoint
    from mlic.models import build_model_from_config

    model = build_model_from_config(cfg.model, num_classes=len(class_names))
    state = {
        "arch": dict(model.arch),
        "class_names": class_names,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "weights": "model",
        "epoch": 1,
        "map": 0.0,
        "ema": model.state_dict(),
        "optimizer": {},
        "scheduler": {},
        "history": [],
        "best_map": 0.0,
        **extra,
    }
    save_checkpoint(path, {k: v for k, v in state.items() if k not in drop})


def test_broken_checkpoints_and_run_directories_are_refused(tmp_path):
    import torch

    cfg = load_config("embedded", [*TINY, f"data.root={tmp_path / 'nowhere'}"])
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "text.pt").write_text("not a checkpoint")
    make_checkpoint(cases / "no-classes.pt", cfg, ["a", "b"], drop=("class_names",))
    make_checkpoint(cases / "no-sections.pt", cfg, ["a", "b"], config={"name": "x"})
    bad = cfg.to_dict()
    bad["model"]["nhead"] = 0
    make_checkpoint(cases / "bad-config.pt", cfg, ["a", "b"], config=bad)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))

    torch.save({"format": "mlic-checkpoint-1", "x": Evil()}, cases / "evil.pt")
    # A run directory whose config.yaml is random bytes (its checkpoint is fine).
    run = tmp_path / "run"
    make_checkpoint(run / "checkpoints" / "best.pt", cfg, ["a", "b"])
    (run / "config.yaml").write_bytes(b"\xff" + os.urandom(2000))
    expected = [
        ("cases/text.pt", "not a loadable checkpoint"),
        ("cases/no-classes.pt", "class_names"),
        ("cases/no-sections.pt", "lacks the 'data' section"),
        ("cases/bad-config.pt", "model.nhead=0"),
        ("cases/evil.pt", "refused"),
        ("run", "config.yaml: not UTF-8"),
    ]
    commands = [("", ["evaluate", path, "--device", "cpu"]) for path, _ in expected]
    lines = mlic_many(commands, tmp_path)
    for line, (name, problem) in zip(lines, expected, strict=True):
        assert name in line and problem in line, line
    evil = lines[4]
    assert "weights_only" not in evil and "\x1b" not in evil and "pwned" not in evil
    assert not (tmp_path / "pwned.txt").exists()


def test_resume_refuses_broken_checkpoints_without_touching_the_record(tmp_path):
    cfg = load_config("embedded", [*TINY, "data.root=nowhere"])
    cases = [(b"ab", "not a loadable checkpoint"), (("optimizer",), "lacks 'optimizer'"),
             (("history",), "lacks 'history'")]  # fmt: skip
    for i, (content, _) in enumerate(cases):
        run = tmp_path / f"run{i}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text(cfg.to_yaml())
        (run / "history.csv").write_text("epoch\n1\n")
        last = run / "checkpoints" / "last.pt"
        if isinstance(content, bytes):
            last.write_bytes(content)
        else:
            make_checkpoint(last, cfg, ["a", "b"], drop=content)
    before = snapshot(tmp_path)
    commands = [
        ("", ["train", "--set", *TINY, "data.root=nowhere", "--run-dir", f"run{i}", "--resume"])
        for i in range(len(cases))
    ]
    lines = mlic_many(commands, tmp_path)
    for i, (line, (_, problem)) in enumerate(zip(lines, cases, strict=True)):
        assert f"run{i}/checkpoints/last.pt" in line and problem in line, line
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- 1. faults while writing


def test_faults_while_writing_are_one_line_and_keep_the_old_files(tmp_path):
    """A full disk, a read-only file system, a folder we may not write (simulated: the tests
    run as root, where permissions do not stop writes), a parent that is a file."""
    cfg = load_config("embedded", [*TINY, "data.root=nowhere"])
    faults = ["ENOSPC", "EROFS", "EACCES"]
    for name in faults:
        run = tmp_path / name
        make_checkpoint(run / "checkpoints" / "last.pt", cfg, ["a", "b"])
        (run / "config.yaml").write_text("# the old config.yaml\n" + cfg.to_yaml())
    (tmp_path / "file").write_text("x")
    before = snapshot(tmp_path)
    resume = ["train", "--set", *TINY, "data.root=nowhere", "--resume", "--run-dir"]
    commands = [(name, [*resume, name]) for name in faults]
    commands.append(("", ["train", "--set", *TINY, "--run-dir", "file/run"]))
    lines = mlic_many(commands, tmp_path)
    import errno

    for line, name in zip(lines, faults, strict=False):
        assert f"{name}/config.yaml: cannot write" in line, line
        assert os.strerror(getattr(errno, name)) in line, line
    assert "file/run" in lines[-1] and "Not a directory" in lines[-1], lines[-1]
    assert snapshot(tmp_path) == before  # the old config.yaml and checkpoint are intact
    assert not list(tmp_path.rglob("*.tmp"))  # and no temporary file is left behind


# --------------------------------------------------------------------------- 4. run records


@pytest.mark.parametrize("part", ["config.yaml", "history.csv", "metrics.json", "checkpoints"])
def test_a_directory_holding_any_part_of_a_run_record_is_refused(tmp_path, part):
    run = tmp_path / "run"
    run.mkdir()
    if part == "checkpoints":
        (run / part).mkdir()
    else:
        (run / part).write_text("precious\n")
    before = (snapshot(run), sorted(p.name for p in run.iterdir()))
    proc = mlic("train", "--set", *TINY, "--run-dir", "run", cwd=tmp_path, timeout=60)
    refused(proc, "run", part, "--resume", "--overwrite")
    assert (snapshot(run), sorted(p.name for p in run.iterdir())) == before  # not even a .lock
    if part != "config.yaml":  # --resume needs a checkpoint when there are results
        proc = mlic("train", "--set", *TINY, "--run-dir", "run", "--resume", cwd=tmp_path)
        refused(proc, "last.pt", "--overwrite")
        assert (snapshot(run), sorted(p.name for p in run.iterdir())) == before


def test_overwrite_replaces_the_record_explicitly(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text('{"complete": true}\n')
    (run / "checkpoints" / "last.pt").write_text("old")
    (run / "notes.txt").write_text("mine")
    # The data root is missing: the run starts (old record removed, new config written), then
    # stops with one line before training.
    proc = mlic("train", "--set", *TINY, "data.root=nowhere", "--run-dir", "run", "--overwrite",
                cwd=tmp_path, timeout=180)  # fmt: skip
    refused(proc, "nowhere")
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml", "notes.txt"]
    assert load_config(path=run / "config.yaml").data.root == "nowhere"
    both = mlic("train", "--run-dir", "run", "--overwrite", "--resume", cwd=tmp_path)
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_a_refused_second_writer_leaves_the_lock_and_its_pid(tmp_path):
    from mlic.runrecord import run_lock

    run = tmp_path / "run"
    with run_lock(run):
        proc = mlic("train", "--set", *TINY, "--run-dir", "run", "--resume", cwd=tmp_path,
                    timeout=180)  # fmt: skip
        refused(proc, "another process")
        assert (run / ".lock").read_text() == f"{os.getpid()}\n"


# --------------------------------------------------------------------------- 5. umask


def test_run_files_follow_the_umask(tmp_path):
    umasks = {"022": 0o644, "002": 0o664, "077": 0o600}
    commands = [
        (f"umask={u}", ["train", "--set", *TINY, "data.root=nowhere", "--run-dir", f"run{u}"])
        for u in umasks
    ]
    for line in mlic_many(commands, tmp_path):  # each stops after config.yaml is written
        assert "nowhere" in line, line
    for u, mode in umasks.items():
        assert stat.S_IMODE((tmp_path / f"run{u}" / "config.yaml").stat().st_mode) == mode, u
