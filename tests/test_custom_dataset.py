"""Your own dataset: the CSV format (every kind of bad input gives one line naming the file and
the row) and COCO files with their own categories and split names, trained end to end."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from mlic.config import load_config
from mlic.data import read_coco
from mlic.data.csv_dataset import read_csv_split, write_csv_split
from mlic.errors import ConfigError, DataError


def _image(path, colour=(10, 200, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 20), colour).save(path)


@pytest.fixture
def csv_root(tmp_path):
    root = tmp_path / "mydata"
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        _image(root / "img" / name)
    (root / "train.csv").write_text(
        "image,labels\nimg/a.jpg,dog|cat\nimg/b.jpg, cat \nimg/c.jpg,\n"
    )
    (root / "val.csv").write_text("image,labels,note\nimg/d.jpg,dog,x\nimg/e.jpg,cat|dog,y\n")
    return root


def test_reads_the_documented_format(csv_root):
    train = read_csv_split(csv_root, "train")
    assert train.class_names == ["cat", "dog"]  # the training labels, sorted
    assert train.targets.tolist() == [[1, 1], [1, 0], [0, 0]]
    assert train.num_without_labels == 1
    val = read_csv_split(csv_root, "val")
    assert val.class_names == ["cat", "dog"] and val.targets.tolist() == [[0, 1], [1, 1]]
    assert str(val.image_path(0)) == str(csv_root / "img" / "d.jpg")
    # classes.txt fixes the order (and may list classes no image shows)
    (csv_root / "classes.txt").write_text("dog\ncat\nbird\n")
    assert read_csv_split(csv_root, "train").targets.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]


def _fails(root, split, *needles):
    with pytest.raises(DataError) as info:
        read_csv_split(root, split)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def test_bad_csv_input_names_the_file_and_the_row(csv_root):
    train, val = csv_root / "train.csv", csv_root / "val.csv"
    val.write_text("image,labels\nimg/d.jpg,dog\nimg/e.jpg,horse\n")
    _fails(csv_root, "val", str(val), "line 3", "'horse'", "training split train.csv")
    val.write_text("image,labels\nimg/d.jpg,dog\nimg/missing.jpg,dog\n")
    _fails(csv_root, "val", str(val), "line 3", "missing.jpg not found")
    val.write_text("image,labels\nimg/d.jpg,dog\nimg/e.jpg,cat\nimg/./d.jpg,cat\n")
    _fails(csv_root, "val", str(val), "line 4", "listed again (first on line 2)")
    val.write_text("image,labels\n")
    _fails(csv_root, "val", str(val), "the split is empty")
    val.write_text("file,classes\nimg/d.jpg,dog\n")
    _fails(csv_root, "val", str(val), "image,labels")
    val.write_text("image,labels\nimg/d.jpg,dog||cat\n")
    _fails(csv_root, "val", str(val), "line 2", "empty label")
    val.write_text("image,labels\n,dog\n")
    _fails(csv_root, "val", str(val), "line 2", "image column is empty")
    val.write_bytes(b"image,labels\nimg/d.jpg,\xff\n")
    _fails(csv_root, "val", str(val), "cannot read")
    _fails(csv_root, "test", str(csv_root / "test.csv"), "not found")
    (csv_root / "classes.txt").write_text("dog\n")
    _fails(csv_root, "train", str(train), "line 2", "'cat'", "classes.txt")
    (csv_root / "classes.txt").write_text("dog\ndog\n")
    _fails(csv_root, "train", "classes.txt", "listed twice")
    (csv_root / "classes.txt").unlink()
    train.write_text("image,labels\nimg/a.jpg,\n")
    _fails(csv_root, "train", str(train), "no row has a label")


def test_csv_needs_a_root():
    with pytest.raises(ConfigError, match="data.root"):
        load_config("embedded", ["data.dataset=csv"])


def _linked_coco(tiny_embedded_root, csv_dir):
    """The images must lie under the CSV's folder: link the embedded COCO tree into it."""
    csv_dir.mkdir(parents=True, exist_ok=True)
    (csv_dir / "coco").symlink_to(tiny_embedded_root / "coco", target_is_directory=True)
    return csv_dir / "coco"


def test_embedded_split_round_trips_through_csv(tiny_embedded_root, tmp_path):
    coco = read_coco(_linked_coco(tiny_embedded_root, tmp_path / "csv"), "val2014")
    path = write_csv_split(coco, tmp_path / "csv" / "train.csv")
    back = read_csv_split(tmp_path / "csv", "train")
    # classes are the labels that occur, sorted: compare by name
    for k, name in enumerate(back.class_names):
        np.testing.assert_array_equal(
            back.targets[:, k], coco.targets[:, coco.class_names.index(name)]
        )
    assert set(back.class_names) == {
        n for k, n in enumerate(coco.class_names) if coco.targets[:, k].any()
    }
    assert [str(p) for p in back.files] == [str(f) for f in coco.files]
    assert path.read_text().splitlines()[1].startswith("coco/val2014/")


def test_write_csv_split_refuses_images_outside_the_csv_folder(tiny_embedded_root, tmp_path):
    # A CSV dataset's reader refuses paths that leave its folder, so the writer never makes one.
    coco = read_coco(tiny_embedded_root / "coco", "val2014")
    with pytest.raises(DataError, match="outside the CSV's folder"):
        write_csv_split(coco, tmp_path / "elsewhere" / "val.csv")
    assert not (tmp_path / "elsewhere" / "val.csv").exists()


def test_train_predict_on_a_csv_dataset_and_own_coco_splits(tiny_embedded_root, tmp_path, capsys):
    """Class names come from the data, num_classes follows, and the run record carries them."""
    from conftest import TINY_RUN

    from mlic.fit import fit
    from mlic.inference import load_trained
    from mlic.predict import predict_images

    csv_dir = tmp_path / "csv"
    coco = _linked_coco(tiny_embedded_root, csv_dir)
    write_csv_split(read_coco(coco, "train2014"), csv_dir / "train.csv")
    val = read_coco(coco, "val2014")
    keep = list(val.class_names)  # classes.txt: the model's outputs in COCO's order
    (csv_dir / "classes.txt").write_text("\n".join(keep) + "\n")
    write_csv_split(val.head(24), csv_dir / "val.csv")
    cfg = load_config("embedded", [*TINY_RUN, "data.dataset=csv", f"data.root={csv_dir}"])
    fit(cfg, tmp_path / "run_csv", progress=False)
    trained = load_trained(tmp_path / "run_csv", device="cpu")
    assert trained.class_names == keep and trained.model.arch["num_classes"] == len(keep)
    thresholds = json.loads((tmp_path / "run_csv" / "thresholds.json").read_text())
    assert thresholds["chosen_on"]["split"] == "val" and thresholds["class_names"] == keep
    got = predict_images(trained, [str(f) for f in val.files[:4]])
    assert got.scores.shape == (4, len(keep))

    # COCO with its own categories and split names: three categories, splits "mine_a"/"mine_b"
    own = tmp_path / "own"
    cats = [{"id": 7, "name": "left"}, {"id": 3, "name": "right"}, {"id": 9, "name": "both"}]
    for split, n in (("mine_a", 16), ("mine_b", 8)):
        images, anns = [], []
        for i in range(n):
            _image(own / split / f"{i}.jpg", colour=(20 * i % 255, 100, 200))
            images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 24, "height": 20})
            anns.append({"id": i + 1, "image_id": i + 1, "category_id": [7, 3, 9][i % 3]})
        (own / "annotations").mkdir(parents=True, exist_ok=True)
        data = {"images": images, "annotations": anns, "categories": cats}
        (own / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    cfg = load_config(
        "embedded",
        [*TINY_RUN, f"data.root={own}", "data.train_split=mine_a", "data.val_split=mine_b"],
    )
    fit(cfg, tmp_path / "run_coco", progress=False)
    trained = load_trained(tmp_path / "run_coco", device="cpu")
    assert trained.class_names == ["right", "left", "both"]  # ids 3, 7, 9
    shutil.rmtree(own / "mine_b")
    with pytest.raises(DataError, match="mine_b"):
        read_coco(own, "mine_b")
    capsys.readouterr()


def test_classes_seen_only_in_validation_are_reported(csv_root, tmp_path):
    from mlic.data.checks import unseen_in_training

    (csv_root / "classes.txt").write_text("cat\ndog\nbird\n")
    (csv_root / "train.csv").write_text("image,labels\nimg/a.jpg,cat\nimg/b.jpg,cat\n")
    (csv_root / "val.csv").write_text("image,labels\nimg/d.jpg,dog|bird\nimg/e.jpg,cat\n")
    train, val = read_csv_split(csv_root, "train"), read_csv_split(csv_root, "val")
    assert unseen_in_training(train, val) == ["dog", "bird"]


def test_the_example_csv_dataset_follows_the_format():
    """examples/csv-dataset (README) names embedded images; `mlic data embedded` makes them."""
    from pathlib import Path

    from mlic.data.csv_dataset import read_rows

    root = Path(__file__).resolve().parents[1] / "examples" / "csv-dataset"
    train = read_rows(root / "train.csv")
    val = read_rows(root / "val.csv")
    assert len(train) == 40 and len(val) == 20
    classes = {label for _, _, labels in train for label in labels}
    assert {label for _, _, labels in val for label in labels} <= classes
    for _, image, _ in train + val:
        assert image.startswith("coco/") and image.endswith(".jpg")
    # coco/ is a link into the embedded dataset: inside the CSV's folder, as paths must be
    assert os.readlink(root / "coco") == "../../data/embedded/coco"


def test_the_example_csv_dataset_names_the_images_its_labels_describe():
    # The example points into the default embedded dataset (seed 0) by file name; the ids of the
    # validation images follow the training split's size, so a new default size moves them.
    import re
    from pathlib import Path

    from mlic.data.csv_dataset import read_rows
    from mlic.data.embedded import CLASSES, DEFAULT_IMAGE_SIZE, DEFAULT_NUM_TRAIN, SPLITS
    from mlic.data.synth import render_image

    root = Path(__file__).resolve().parents[1] / "examples" / "csv-dataset"
    for name in ("train.csv", "val.csv"):
        for _, image, labels in read_rows(root / name):
            split, image_id = re.search(r"embedded_(\w+?)_(\d+)\.jpg$", image).groups()
            code = SPLITS.index(split)
            index = int(image_id) - 1 - (DEFAULT_NUM_TRAIN if code == 1 else 0)
            assert index >= 0, f"{name}: {image} is not an image of the default dataset"
            _, objects = render_image(0, code, index, DEFAULT_IMAGE_SIZE)
            assert set(labels) == {CLASSES[o["class_index"]] for o in objects}, image
