"""`mlic data coco|voc --download` without the internet: stand-in archives (tests/standins.py)
with their own sizes and MD5s, served from 127.0.0.1. Resuming after a dropped connection and
across runs, checksum mismatches, 404s, no network, a full disk, unsafe archive members."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import random
import shutil
import socket
import stat
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from standins import coco_archives, only_localhost, serve, standin_sources, voc_archives

from mlic.cli import main
from mlic.data import disk, download, fetch, sources, unpack
from mlic.data.download import prepare
from mlic.data.sources import Archive
from mlic.errors import DataError, OutputError


@pytest.fixture(autouse=True)
def _only_localhost(monkeypatch):
    only_localhost(monkeypatch)


@pytest.fixture(scope="module")
def blobs():
    return {**coco_archives(), **voc_archives()}


def _prepare(dataset, root, server, blobs, **kwargs):
    kwargs = {"download": True, "backoff": 0.0, "log": lambda line: None, **kwargs}
    return prepare(dataset, root, sources=standin_sources(dataset, server.url, blobs), **kwargs)


def test_both_datasets_unpack_into_the_presets_layout_and_a_rerun_skips(tmp_path, blobs):
    with serve(blobs) as server:
        assert _prepare("coco", tmp_path / "coco", server, blobs) == []
        assert _prepare("voc", tmp_path / "voc", server, blobs) == []
        first = len(server.requests)
        lines = []
        assert _prepare("coco", tmp_path / "coco", server, blobs, log=lines.append) == []
        assert len(server.requests) == first  # nothing fetched again
    assert len(lines) == 3 and all(line.startswith("[skip]") for line in lines)
    coco, voc = tmp_path / "coco", tmp_path / "voc" / "VOC2007"
    assert len(list((coco / "train2014").glob("*.jpg"))) == 6
    assert len(list((coco / "val2014").glob("*.jpg"))) == 4
    assert (coco / "annotations" / "instances_val2014.json").is_file()
    assert (voc / "ImageSets" / "Main" / "trainval.txt").is_file()
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == 10  # both tars merged, VOCdevkit/ gone
    assert not (tmp_path / "voc" / "VOCdevkit").exists()
    assert not (coco / "archives").exists()  # archives removed after unpacking, then the folder
    # The loaders read what was unpacked.
    from mlic.data.splits import read_split

    assert read_split("coco", coco, "train2014").num_images == 6
    assert read_split("voc", tmp_path / "voc", "test").num_images == 4


def test_a_connection_dropped_mid_file_resumes_with_a_range_request(tmp_path, blobs):
    with serve(blobs) as server:
        server.drop_after["val2014.zip"] = 1000
        assert _prepare("coco", tmp_path, server, blobs) == []
        val = [r for r in server.requests if r[0] == "val2014.zip"]
    assert val == [("val2014.zip", None), ("val2014.zip", "bytes=1000-")]
    assert len(list((tmp_path / "val2014").glob("*.jpg"))) == 4  # the MD5 matched


def test_a_partial_file_from_an_earlier_run_is_resumed(tmp_path, blobs):
    data = blobs["VOCtest_06-Nov-2007.tar"]
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / "VOCtest_06-Nov-2007.tar.part").write_bytes(data[:5000])
    with serve(blobs) as server:
        assert _prepare("voc", tmp_path, server, blobs) == []
        assert ("VOCtest_06-Nov-2007.tar", "bytes=5000-") in server.requests
    with serve(blobs) as server:  # a server that ignores Range: the download starts over
        server.ranges = False
        (tmp_path / "archives").mkdir(exist_ok=True)
        (tmp_path / "archives" / "VOCtest_06-Nov-2007.tar.part").write_bytes(data[:5000])
        (tmp_path / ".mlic-data" / "VOCtest_06-Nov-2007.tar.json").unlink()
        assert _prepare("voc", tmp_path, server, blobs) == []


def test_too_many_drops_keep_the_partial_file_and_say_how_to_resume(tmp_path, blobs):
    with serve(blobs) as server:
        server.drop_every["annotations_trainval2014.zip"] = 100
        standin = standin_sources("coco", server.url, blobs)[:1]
        with pytest.raises(DataError) as info:
            prepare("coco", tmp_path, download=True, sources=standin, retries=2, backoff=0,
                    log=lambda line: None)  # fmt: skip
    message = str(info.value)
    assert "broke off 3 times" in message and "kept" in message and "\n" not in message
    part = tmp_path / "archives" / "annotations_trainval2014.zip.part"
    assert part.stat().st_size == 300  # 100 bytes from each of the three answers


def test_a_wrong_checksum_renames_the_file_unpacks_nothing_and_a_rerun_downloads_afresh(
    tmp_path, blobs
):
    with serve(blobs) as server:
        good = standin_sources("voc", server.url, blobs)
        bad = (replace(good[0], md5="0" * 32), *good[1:])
        with pytest.raises(DataError) as info:
            prepare("voc", tmp_path, download=True, sources=bad, log=lambda line: None)
        message = str(info.value)
        assert "MD5" in message and "0" * 32 in message and ".bad" in message
        assert "\n" not in message
        archives = tmp_path / "archives"
        assert (archives / "VOCtrainval_06-Nov-2007.tar.bad").is_file()
        assert not (archives / "VOCtrainval_06-Nov-2007.tar.part").exists()
        assert not (tmp_path / "VOC2007").exists()  # nothing unpacked
        before = len(server.requests)
        assert prepare("voc", tmp_path, download=True, sources=good, log=lambda line: None) == []
        assert server.requests[before] == ("VOCtrainval_06-Nov-2007.tar", None)  # from byte 0


def test_an_archive_placed_by_hand_is_verified_and_unpacked_without_the_network(tmp_path, blobs):
    standin = standin_sources("voc", "http://127.0.0.1:9", blobs)  # nothing listens there
    lines = []
    assert prepare("voc", tmp_path, sources=standin, log=lines.append) == [a.name for a in standin]
    assert any("--download" in line for line in lines)
    (tmp_path / "archives").mkdir()
    for a in standin:
        (tmp_path / "archives" / a.name).write_bytes(blobs[a.name])
    assert (
        prepare("voc", tmp_path, sources=standin, log=lambda line: None, keep_archives=True) == []
    )
    assert (tmp_path / "VOC2007" / "ImageSets" / "Main" / "test.txt").is_file()
    assert all((tmp_path / "archives" / a.name).is_file() for a in standin)  # kept


def test_a_missing_unpacked_file_brings_the_archive_back(tmp_path, blobs):
    with serve(blobs) as server:
        _prepare("coco", tmp_path, server, blobs)
        next(iter((tmp_path / "val2014").glob("*.jpg"))).unlink()
        before = len(server.requests)
        _prepare("coco", tmp_path, server, blobs)
        assert [r[0] for r in server.requests[before:]] == ["val2014.zip"]
    assert len(list((tmp_path / "val2014").glob("*.jpg"))) == 4


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_and_404_are_one_line_errors_and_a_mirror_is_tried_next(tmp_path, blobs):
    dead = f"http://127.0.0.1:{_closed_port()}"
    with serve(blobs) as server:
        standin = standin_sources("voc", server.url, blobs)[:1]
        gone = (replace(standin[0], urls=(f"{server.url}/missing.tar",)),)
        with pytest.raises(DataError) as info:
            prepare("voc", tmp_path, download=True, sources=gone, log=lambda line: None)
        assert "HTTP 404" in str(info.value) and "\n" not in str(info.value)
        offline = (replace(standin[0], urls=(f"{dead}/VOCtrainval_06-Nov-2007.tar",)),)
        with pytest.raises(DataError) as info:
            prepare("voc", tmp_path, download=True, sources=offline, log=lambda line: None)
        assert "cannot reach" in str(info.value) and "\n" not in str(info.value)
        # The official host down, the mirror up: the mirror serves it.
        both = (replace(standin[0], urls=(offline[0].urls[0], *standin[0].urls)),)
        assert prepare("voc", tmp_path, download=True, sources=both, log=lambda line: None) == []


def test_a_disk_too_small_is_refused_before_downloading(tmp_path, blobs, monkeypatch):
    class Usage:
        free = 10

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage)
    with serve(blobs) as server:
        with pytest.raises(OutputError) as info:
            _prepare("voc", tmp_path, server, blobs)
        assert server.requests == []
    assert "10 B free" in str(info.value) and "--archives" in str(info.value)


def test_archives_on_another_disk_hold_only_the_download_and_the_root_is_checked_first(
    tmp_path, blobs, monkeypatch
):
    """`--archives DIR` on another disk (what the disk error advises): that disk needs room for
    the download only, and the root's disk for the unpacked files, both before any request."""
    archives, root = tmp_path / "big", tmp_path / "voc"
    archives.mkdir()
    assert disk.same_filesystem(archives, root / "not" / "yet")  # one disk here
    largest = max(len(blobs[a.name]) for a in sources.ARCHIVES["voc"])
    free = {archives: largest + 1, root: 1 << 40}  # the download fits there, not twice over

    def usage(path):
        return SimpleNamespace(free=free.get(Path(path), 1 << 40))

    monkeypatch.setattr(shutil, "disk_usage", usage)
    monkeypatch.setattr(download, "same_filesystem", lambda a, b: False)
    with serve(blobs) as server:
        assert _prepare("voc", root, server, blobs, archive_dir=archives) == []
    assert (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").is_file()
    (root / download.STATE_DIR).rename(tmp_path / "records")  # unpack again, into a full root
    free[root] = 10
    with serve(blobs) as server:
        with pytest.raises(OutputError) as info:
            _prepare("voc", root, server, blobs, archive_dir=archives)
        assert server.requests == []
    assert str(info.value).startswith(f"{root}: 10 B free") and "--root" in str(info.value)


def test_a_named_archive_folder_stays_when_emptied(tmp_path, blobs):
    mine = tmp_path / "mine"
    mine.mkdir()
    with serve(blobs) as server:
        assert _prepare("voc", tmp_path / "voc", server, blobs, archive_dir=mine) == []
    assert mine.is_dir() and list(mine.iterdir()) == []  # emptied, not removed: the user's


def test_a_disk_that_fills_up_mid_download_keeps_the_partial_file_for_resuming(
    tmp_path, blobs, monkeypatch
):
    real_open = open

    class Full:
        """A file that takes 2,000 bytes and then reports a full disk."""

        def __init__(self, path, mode):
            self.file = real_open(path, mode)

        def write(self, data):
            room = 2000 - self.file.tell()
            self.file.write(data[: max(room, 0)])
            if room < len(data):
                raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.file.close()

    with serve(blobs) as server:
        with monkeypatch.context() as m, pytest.raises(OutputError) as info:
            m.setattr(fetch, "open", Full, raising=False)
            _prepare("voc", tmp_path, server, blobs)
        message = str(info.value)
        assert "no space left" in message and "kept" in message and "\n" not in message
        part = tmp_path / "archives" / "VOCtrainval_06-Nov-2007.tar.part"
        assert part.stat().st_size == 2000
        assert _prepare("voc", tmp_path, server, blobs) == []  # space again: resumed
        assert ("VOCtrainval_06-Nov-2007.tar", "bytes=2000-") in server.requests


# --------------------------------------------------------------------------- unsafe archives


def _archive(name: str, data: bytes, kind: str, provides=(), strip="") -> Archive:
    md5 = hashlib.md5(data).hexdigest()
    return Archive(name, ("http://127.0.0.1:9/x",), len(data), md5, kind, provides, strip)


def _tar(members) -> bytes:
    """members: (TarInfo, bytes or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ((_file("VOCdevkit/../../evil.txt"), b"x"), "'..'"),
        ((_file("/tmp/evil.txt"), b"x"), "absolute"),
        ((_link("VOCdevkit/VOC2007/link", "/etc/passwd"), None), "link"),
        ((_link("VOCdevkit/VOC2007/hard", "VOCdevkit/VOC2007/ok.txt", tarfile.LNKTYPE), None),
         "link"),
    ],
)  # fmt: skip
def test_unsafe_tar_members_are_refused_before_anything_is_written(tmp_path, member, reason):
    root = tmp_path / "root"
    data = _tar([(_file("VOCdevkit/VOC2007/ok.txt"), b"fine"), member])
    archive = _archive("bad.tar", data, "tar", strip="VOCdevkit/")
    (root / "archives").mkdir(parents=True)
    (root / "archives" / "bad.tar").write_bytes(data)
    with pytest.raises(DataError) as info:
        prepare("voc", root, sources=[archive], log=lambda line: None)
    assert reason in str(info.value) and "nothing unpacked" in str(info.value)
    assert not (root / "VOC2007").exists()  # not even the safe member
    assert not (tmp_path / "evil.txt").exists()


def _zip(entries) -> bytes:
    """entries: (ZipInfo or name, bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (("../evil.txt", b"x"), "'..'"),
        (("/tmp/evil.txt", b"x"), "absolute"),
        ((_symlink_info("val2014/link"), b"/etc/passwd"), "symbolic link"),
        (("val2014/bomb.bin", b"\0" * (4 << 20)), "zip bomb"),  # 4 MiB of zeros: ~1,000 : 1
    ],
)
def test_unsafe_zip_members_are_refused_before_anything_is_written(tmp_path, entry, reason):
    root = tmp_path / "root"
    data = _zip([("val2014/ok.jpg", b"fine"), entry])
    archive = _archive("val2014.zip", data, "zip")
    (root / "archives").mkdir(parents=True)
    (root / "archives" / "val2014.zip").write_bytes(data)
    with pytest.raises(DataError) as info:
        prepare("coco", root, sources=[archive], log=lambda line: None)
    assert reason in str(info.value) and "nothing unpacked" in str(info.value)
    assert not (root / "val2014").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_an_ordinary_compression_ratio_is_accepted(tmp_path):
    """Compressible JSON (about 5 : 1 in COCO's annotations) is no bomb."""
    rng = random.Random(0)
    anns = [
        {"id": i, "image_id": rng.randrange(600_000), "category_id": rng.randrange(1, 91),
         "bbox": [round(rng.uniform(0, 640), 2) for _ in range(4)],
         "segmentation": [[round(rng.uniform(0, 640), 2) for _ in range(12)]]}
        for i in range(8_000)
    ]  # fmt: skip
    text = json.dumps({"annotations": anns}).encode()
    data = _zip([("annotations/instances_val2014.json", text)])
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    assert info.file_size >= unpack.RATIO_FLOOR and info.file_size / info.compress_size < 100
    archive = _archive("a.zip", data, "zip", provides=("annotations/instances_val2014.json",))
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / "a.zip").write_bytes(data)
    assert prepare("coco", tmp_path, sources=[archive], log=lambda line: None) == []


def test_an_archive_without_the_expected_files_is_an_error(tmp_path):
    data = _zip([("something/else.txt", b"x")])
    archive = _archive("val2014.zip", data, "zip", provides=("val2014",))
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / "val2014.zip").write_bytes(data)
    with pytest.raises(DataError, match="not the expected archive"):
        prepare("coco", tmp_path, sources=[archive], log=lambda line: None)


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("command", ["coco", "voc", "check"])
def test_the_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert ("--download" in out and "--mirror" in out) if command != "check" else "--verify" in out


def test_the_cli_downloads_reports_and_exits_nonzero_while_archives_are_missing(
    tmp_path, blobs, monkeypatch, capsys
):
    with serve(blobs) as server:
        monkeypatch.setitem(sources.ARCHIVES, "voc", standin_sources("voc", server.url, blobs))
        assert main(["data", "voc", "--root", str(tmp_path)]) == 1  # no --download: listed
        assert "2 archive(s) missing" in capsys.readouterr().err
        assert server.requests == []
        assert main(["data", "voc", "--root", str(tmp_path), "--download"]) == 0
        assert "next: mlic data check --preset paper-voc-448" in capsys.readouterr().out
        server.files.clear()  # a rerun needs no server
        assert main(["data", "voc", "--root", str(tmp_path), "--download"]) == 0
    # A checksum mismatch through the CLI: one line, exit status 2.
    other = tmp_path / "other"
    with serve(blobs) as server:
        bad = tuple(replace(a, md5="f" * 32) for a in standin_sources("voc", server.url, blobs))
        monkeypatch.setitem(sources.ARCHIVES, "voc", bad)
        assert main(["data", "voc", "--root", str(other), "--download"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlic: error: VOCtrainval_06-Nov-2007.tar: MD5") and err.count("\n") == 1


def test_a_mirror_that_is_no_url_is_one_line_and_a_local_copy_is_one(
    tmp_path, blobs, monkeypatch, capsys
):
    argv = ["data", "voc", "--root", str(tmp_path / "voc"), "--download", "--mirror"]
    assert main([*argv, "mirror.example/voc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlic: error: --mirror mirror.example/voc: not a URL")
    assert err.count("\n") == 1
    copy = tmp_path / "copy"  # the official files copied somewhere: file:// fetches them
    copy.mkdir()
    standin = standin_sources("voc", "http://127.0.0.1:9", blobs)  # nothing listens there
    for a in standin:
        (copy / a.name).write_bytes(blobs[a.name])
    monkeypatch.setitem(sources.ARCHIVES, "voc", standin)
    assert main([*argv, copy.as_uri()]) == 0
    assert (tmp_path / "voc" / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").is_file()


def test_the_mirror_option_keeps_names_and_checksums():
    official = sources.archives("coco")
    mirrored = sources.archives("coco", mirror="https://mirror.example/coco/")
    assert [a.urls for a in mirrored] == [
        (f"https://mirror.example/coco/{a.name}",) for a in official
    ]
    assert [(a.name, a.size, a.md5) for a in mirrored] == [
        (a.name, a.size, a.md5) for a in official
    ]
