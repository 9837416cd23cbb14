"""Stand-ins for the paper's datasets, for tests without the internet: COCO 2014- and VOC
2007-shaped archives (the official names, members and layout; a handful of tiny JPEGs), their
own sizes and MD5s injected into the archive list, and a local HTTP server on 127.0.0.1 that
serves them (with HTTP Range, and a connection it can drop mid-file)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from mlic.data.sources import ARCHIVES, Archive
from mlic.data.voc import VOC_CLASSES

COCO_CATEGORIES = [(1, "person"), (2, "bicycle"), (3, "car"), (18, "dog")]


def jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    colour = ((seed * 70) % 256, (seed * 130) % 256, (seed * 30 + 90) % 256)
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        folders = sorted({name.rsplit("/", i)[0] + "/" for name in members for i in (1, 2, 3)})
        for folder in folders:  # the real archives list their folders too
            info = tarfile.TarInfo(folder.rstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def coco_archives(n_train: int = 6, n_val: int = 4) -> dict[str, bytes]:
    """annotations_trainval2014.zip, train2014.zip, val2014.zip with n images per split; every
    category has a positive in both splits."""
    out, annotations = {}, {}
    for split, n, first in (("train2014", n_train, 1), ("val2014", n_val, 1001)):
        images, anns, files = [], [], {}
        for k in range(n):
            iid = first + k
            name = f"COCO_{split}_{iid:012d}.jpg"
            files[f"{split}/{name}"] = jpeg(iid)
            images.append({"id": iid, "file_name": name, "width": 48, "height": 40})
            for j, (cid, _) in enumerate(COCO_CATEGORIES):
                if (k + j) % 2 == 0 or j == k % len(COCO_CATEGORIES):
                    anns.append({"id": iid * 10 + j, "image_id": iid, "category_id": cid,
                                 "bbox": [2.0 + j, 3.0, 20.0, 16.0], "area": 320.0,
                                 "iscrowd": 0})  # fmt: skip
        cats = [{"id": cid, "name": name, "supercategory": "x"} for cid, name in COCO_CATEGORIES]
        data = {"images": images, "annotations": anns, "categories": cats}
        annotations[f"annotations/instances_{split}.json"] = json.dumps(data).encode()
        out[f"{split}.zip"] = _zip(files)
    out["annotations_trainval2014.zip"] = _zip(annotations)
    return out


def _voc_xml(image_id: str, k: int) -> bytes:
    objects = "".join(
        f"<object><name>{VOC_CLASSES[(k + j) % len(VOC_CLASSES)]}</name><difficult>0</difficult>"
        f"<bndbox><xmin>{3 + j}</xmin><ymin>4</ymin><xmax>30</xmax><ymax>28</ymax></bndbox>"
        "</object>"
        for j in range(2)
    )
    return (
        f"<annotation><filename>{image_id}.jpg</filename><size><width>48</width>"
        f"<height>40</height><depth>3</depth></size>{objects}</annotation>"
    ).encode()


def voc_archives(n_trainval: int = 6, n_test: int = 4) -> dict[str, bytes]:
    """VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar (VOCdevkit/VOC2007/...); the
    images' objects cycle through the 20 classes."""
    out = {}
    for name, split, n, first in (
        ("VOCtrainval_06-Nov-2007.tar", "trainval", n_trainval, 1),
        ("VOCtest_06-Nov-2007.tar", "test", n_test, 501),
    ):
        base = "VOCdevkit/VOC2007"
        ids = [f"{first + k:06d}" for k in range(n)]
        members = {}
        for k, image_id in enumerate(ids):
            members[f"{base}/Annotations/{image_id}.xml"] = _voc_xml(image_id, first + k)
            members[f"{base}/JPEGImages/{image_id}.jpg"] = jpeg(first + k)
        members[f"{base}/ImageSets/Main/{split}.txt"] = "".join(f"{i}\n" for i in ids).encode()
        out[name] = _tar(members)
    return out


def standin_sources(dataset: str, base_url: str, blobs: dict[str, bytes]) -> tuple[Archive, ...]:
    """The official archive list of `dataset` with the stand-ins' URLs, sizes and MD5s."""
    return tuple(
        replace(
            a,
            urls=(f"{base_url}/{a.name}",),
            size=len(blobs[a.name]),
            md5=hashlib.md5(blobs[a.name]).hexdigest(),
        )
        for a in ARCHIVES[dataset]
    )


class StandinServer(ThreadingHTTPServer):
    """Serves `files` (name -> bytes) at /<name>; `drop_after[name] = n` sends only n bytes of
    the next answer for that file and closes the connection (`drop_every`: of every answer);
    `ranges=False` ignores Range."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = dict(files)
        self.drop_after: dict[str, int] = {}
        self.drop_every: dict[str, int] = {}
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []  # (name, Range header)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StandinServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        srv = self.server
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        srv.requests.append((name, rng))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and srv.ranges:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        cut = srv.drop_after.pop(name, srv.drop_every.get(name))
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


@contextmanager
def serve(files: dict[str, bytes]) -> Iterator[StandinServer]:
    """A StandinServer on 127.0.0.1 (a free port) in a thread, shut down on exit."""
    server = StandinServer(files)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def only_localhost(monkeypatch) -> None:
    """Make any host but 127.0.0.1 fail to resolve (an autouse fixture's body): no test that
    serves stand-in archives can reach another address."""
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"a test tried to reach {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
