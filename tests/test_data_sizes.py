"""The data layer's object sizes for "AP by object size": per image and class the largest
instance's area (as a fraction of the image), from COCO's `area` or bbox and VOC's boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlic.data.coco import read_coco
from mlic.data.splits import read_split
from mlic.data.voc import read_voc
from mlic.metrics import size_bucket


def test_coco_largest_instance_uses_area_then_bbox_and_counts_crowds(make_coco):
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
            {"id": 2, "file_name": "b.jpg", "width": 320, "height": 240},
        ],
        "categories": [
            {"id": 3, "name": "cat"},
            {"id": 5, "name": "dog"},
            {"id": 9, "name": "owl"},
        ],
        "annotations": [
            # image 1: two cats (the larger, 3000 px^2, decides: medium), a dog given only by
            # its box (100 x 100: large), a crowd of owls (a label like any other: 800 px^2).
            {"id": 1, "image_id": 1, "category_id": 3, "area": 500.0, "bbox": [0, 0, 99, 99]},
            {"id": 2, "image_id": 1, "category_id": 3, "area": 3000.0, "bbox": [0, 0, 9, 9]},
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [10, 10, 100, 100]},
            {"id": 4, "image_id": 1, "category_id": 9, "area": 800.0, "iscrowd": 1},
            # image 2 (a quarter of the reference area): 500 px^2 is 2000 px^2 at 640 x 480.
            {"id": 5, "image_id": 2, "category_id": 3, "area": 500.0},
        ],
    }
    index = read_coco(make_coco(data), "val2014")
    got = index.largest_area_fraction
    assert got.shape == (2, 3) and got.dtype == np.float64
    assert got[0].tolist() == pytest.approx([3000 / 307200, 10000 / 307200, 800 / 307200])
    assert got[1, 0] == pytest.approx(500 / 76800)
    assert math.isnan(got[1, 1]) and math.isnan(got[1, 2])  # no instance: no area
    assert size_bucket(got).tolist() == [[1, 2, 0], [1, -1, -1]]
    assert index.largest_area_fraction is got  # computed once per split


def test_voc_largest_instance_is_the_largest_non_difficult_box(make_voc):
    root = make_voc(
        {
            "000001": [
                ("dog", 0, (1, 1, 10, 10)),  # 100 px^2 of a 40 x 30 image
                ("dog", 1, (1, 1, 40, 30)),  # difficult: does not make the label, not counted
                ("cat", 1, (1, 1, 20, 20)),  # difficult only: ignored in evaluation
                ("bird", 0, (1, 1, 1, 3)),  # 3 px^2 (inclusive pixels): 768 px^2 at 640 x 480
            ]
        },
        classes=["bird", "cat", "dog"],
    )
    index = read_voc(root, "test")
    got = index.largest_area_fraction
    assert got[0, 0] == pytest.approx(3 / 1200) and got[0, 2] == pytest.approx(100 / 1200)
    assert math.isnan(got[0, 1]) and index.ignore[0, 1]
    assert size_bucket(got).tolist() == [[0, -1, 2]]


@pytest.mark.parametrize(
    ("dataset", "tree", "split"), [("coco", "coco", "val2014"), ("voc", "voc", "test")]
)
def test_every_positive_of_the_embedded_trees_has_an_area(tiny_embedded_root, dataset, tree, split):
    index = read_split(dataset, tiny_embedded_root / tree, split)
    known = np.isfinite(index.largest_area_fraction)
    assert (known == (index.targets == 1)).all()  # an area exactly where a label is positive
    assert (
        (index.largest_area_fraction[known] > 0) & (index.largest_area_fraction[known] <= 1)
    ).all()
    first = index.head(5)
    assert np.array_equal(
        first.largest_area_fraction, index.largest_area_fraction[:5], equal_nan=True
    )


def test_the_torch_dataset_exposes_the_areas(tiny_embedded_root):
    from mlic.config import load_config
    from mlic.data.build import build_dataset

    cfg = load_config(
        "embedded", [f"data.embedded_root={tiny_embedded_root}", "data.max_val_images=8"]
    )
    dataset = build_dataset(cfg.data, "val")
    assert dataset.largest_area_fraction.shape == (8, dataset.num_classes)


def test_boxes_are_image_fractions_from_cocos_bbox_and_vocs_inclusive_pixels(make_coco, make_voc):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}],
        "categories": [{"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "area": 50.0, "bbox": [20, 10, 40, 50]},
            {"id": 2, "image_id": 1, "category_id": 3, "area": 50.0},  # no bbox: no box
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [180, 0, 40, 10]},  # past the edge
        ],
    }
    boxes = read_coco(make_coco(data), "val2014").objects.box
    assert boxes[0].tolist() == pytest.approx([0.1, 0.1, 0.3, 0.6])
    assert np.isnan(boxes[1]).all()
    assert boxes[2].tolist() == pytest.approx([0.9, 0.0, 1.0, 0.1])  # clipped to the image
    # VOC: xmin..xmax are inclusive 1-based pixels, so (1, 1, 10, 10) is the 10 x 10 corner.
    root = make_voc({"000001": [("dog", 0, (1, 1, 10, 10)), ("dog", 0, (21, 11, 40, 30))]},
                    classes=["dog"])  # fmt: skip
    boxes = read_voc(root, "test").objects.box
    np.testing.assert_allclose(boxes, [[0, 0, 10 / 40, 10 / 30], [0.5, 1 / 3, 1, 1]], rtol=1e-6)


def test_boxes_follow_the_images_through_head_and_holdout(tiny_embedded_root):
    from mlic.data.holdout import take

    index = read_split("coco", tiny_embedded_root / "coco", "val2014")
    assert np.isfinite(index.objects.box).all()
    rows = np.array([3, 7])
    part = take(index, rows)
    for new, old in enumerate(rows):
        assert np.array_equal(
            part.objects.box[part.objects.image_index == new],
            index.objects.box[index.objects.image_index == old],
        )
    first = index.head(5).objects
    assert np.array_equal(first.box, index.objects.box[index.objects.image_index < 5])
