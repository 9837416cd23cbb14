"""Hostile and broken input: each case gives a one-line DataError naming the file and the
problem, or (an unreadable image in training) a counted skip."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mlic.data import (
    MultiLabelDataset,
    collate_skip_unreadable,
    dataset_stats,
    make_transforms,
    open_rgb,
    read_coco,
    read_voc,
)
from mlic.errors import DataError

MINIMAL_COCO = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
    "categories": [{"id": 1, "name": "person"}],
    "annotations": [],
}


def raises_one_line(match: str, fn, *args):
    """The error's message is a single line and mentions `match` (a file name)."""
    with pytest.raises(DataError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message and match in message, message
    return message


# --------------------------------------------------------------------------- missing files


def test_missing_annotation_file_and_image_folder(make_coco, make_voc, tmp_path):
    root = make_coco(MINIMAL_COCO)
    raises_one_line("instances_train2014.json", read_coco, root, "train2014")
    shutil.rmtree(root / "val2014")
    assert "image folder not found" in raises_one_line("val2014", read_coco, root, "val2014")

    voc = make_voc({"a": [("dog", 0, (1, 1, 5, 5))]})
    raises_one_line("trainval.txt", read_voc, voc, "trainval")
    (voc / "VOC2007" / "Annotations" / "a.xml").unlink()
    assert "not found" in raises_one_line("a.xml", read_voc, voc, "test")
    shutil.rmtree(voc / "VOC2007" / "JPEGImages")
    raises_one_line("JPEGImages", read_voc, voc, "test")
    raises_one_line(str(tmp_path / "nowhere"), read_voc, tmp_path / "nowhere", "test")


# --------------------------------------------------------------------------- unparsable files


def test_json_that_does_not_parse_or_has_the_wrong_shape(make_coco):
    root = make_coco('{"images": [1, 2')
    assert "not valid JSON" in raises_one_line("instances_val2014.json", read_coco, root, "val2014")
    root = make_coco("[1, 2, 3]")
    raises_one_line("instances_val2014.json", read_coco, root, "val2014")
    root = make_coco({"images": [{"id": 1}], "categories": []}, images=False)
    assert "file_name" in raises_one_line("instances_val2014.json", read_coco, root, "val2014")


def test_xml_that_does_not_parse(make_voc):
    root = make_voc({"a": "<annotation><object><name>dog</name></annotation>"})
    assert "does not parse" in raises_one_line("a.xml", read_voc, root, "test")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotation><object><name>&lol4;</name></object></annotation>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotation><object><name>&secret;</name></object></annotation>
"""


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["bomb", "external"])
def test_entity_expansion_and_external_entities_are_refused(make_voc, xml):
    root = make_voc({"evil": xml})
    assert "entities" in raises_one_line("evil.xml", read_voc, root, "test")


# --------------------------------------------------------------------------- unknown classes


def test_a_class_outside_the_class_list(make_coco, make_voc):
    data = {**MINIMAL_COCO, "annotations": [{"id": 7, "image_id": 1, "category_id": 42}]}
    message = raises_one_line("instances_val2014.json", read_coco, make_coco(data), "val2014")
    assert "category_id 42" in message
    root = make_voc({"a": [("dog", 0, (1, 1, 5, 5)), ("unicorn", 0, (1, 1, 5, 5))]})
    assert "'unicorn'" in raises_one_line("a.xml", read_voc, root, "test")
    root = make_voc({"b": [("dog", 0, (1, 1, 5, 5))]}, classes=["cat"])
    assert "classes.txt" in raises_one_line("b.xml", read_voc, root, "test")


# --------------------------------------------------------------------------- empty splits


def test_an_empty_split(make_coco, make_voc):
    root = make_coco({**MINIMAL_COCO, "images": []})
    assert "no images" in raises_one_line("instances_val2014.json", read_coco, root, "val2014")
    root = make_voc({})
    assert "no images" in raises_one_line("test.txt", read_voc, root, "test")


# --------------------------------------------------------------------------- broken images


@pytest.fixture
def broken_images(tiny_embedded_root, tmp_path):
    """A copy of the tiny embedded COCO tree whose val images 1 (truncated) and 4 (not an image)
    are broken."""
    root = tmp_path / "coco"
    shutil.copytree(tiny_embedded_root / "coco", root)
    files = sorted((root / "val2014").iterdir())
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])
    files[4].write_text("this is not a JPEG")
    return root, files[1].name, files[4].name


def test_unreadable_images_are_skipped_and_counted_in_training(broken_images):
    root, truncated, not_image = broken_images
    index = read_coco(root, "val2014")
    raises_one_line(truncated, open_rgb, index.image_path(1))
    assert "not an image" in raises_one_line(not_image, open_rgb, index.image_path(4))
    train = MultiLabelDataset(index, make_transforms(32, train=True), skip_unreadable=True)
    assert train[1] is None and train[4] is None and train[0] is not None
    loader = torch.utils.data.DataLoader(
        train, batch_size=4, collate_fn=collate_skip_unreadable, num_workers=0
    )
    batches = list(loader)
    assert sum(b[3] for b in batches) == 2
    assert sum(b[0].shape[0] for b in batches) == len(index) - 2
    # Images 0-3 and 4-7 each lose one.
    assert batches[0][0].shape == (3, 3, 32, 32) and batches[0][1].shape == (3, index.num_classes)
    assert [b[3] for b in batches[:3]] == [1, 1, 0]


def test_unreadable_images_are_errors_in_evaluation_and_listed_by_verify(broken_images):
    root, truncated, not_image = broken_images
    index = read_coco(root, "val2014")
    evaluation = MultiLabelDataset(index, make_transforms(32, train=False), skip_unreadable=False)
    raises_one_line(truncated, evaluation.__getitem__, 1)
    stats = dataset_stats("coco", root, "val2014", verify=True)
    assert stats["unreadable"] == [truncated, not_image] and stats["num_unreadable"] == 2


def test_a_batch_of_only_unreadable_images_collates_to_an_empty_batch():
    images, targets, ignore, skipped = collate_skip_unreadable([None, None])
    assert images.shape[0] == targets.shape[0] == ignore.shape[0] == 0 and skipped == 2


# --------------------------------------------------------------------------- other image modes


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("L", 128, (128, 128, 128)),
        ("LA", (77, 10), (77, 77, 77)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),  # alpha dropped, as convert("RGB") does
        ("CMYK", (255, 0, 0, 0), (0, 255, 255)),  # pure cyan ink
        ("I;16", 65535, (255, 255, 255)),  # 16-bit white stays white (not clipped garbage)
        ("I;16", 32896, (128, 128, 128)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_other_image_modes_are_converted_to_rgb(tmp_path, mode, value, expected):
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    Image.new(mode, (6, 4), value).save(path)
    image = open_rgb(path)
    assert image.mode == "RGB" and image.size == (6, 4)
    assert np.asarray(image)[2, 3].tolist() == list(expected)


def test_palette_images_with_transparency_convert_without_warnings(tmp_path, recwarn):
    path = tmp_path / "p.png"
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.save(path, transparency=0)
    assert np.asarray(open_rgb(path))[0, 0].tolist() == [255, 0, 0]
    assert not [w for w in recwarn if "ransparency" in str(w.message)]


def test_a_grayscale_jpeg_in_a_coco_tree_loads_as_three_channels(make_coco):
    root = make_coco(MINIMAL_COCO)
    Image.new("L", (40, 30), 90).save(root / "val2014" / "a.jpg")
    dataset = MultiLabelDataset(read_coco(root, "val2014"), make_transforms(32, train=False))
    image = dataset[0][0]
    assert image.shape == (3, 32, 32)
    assert torch.allclose(image, torch.full_like(image, 90 / 255), atol=2 / 255)
