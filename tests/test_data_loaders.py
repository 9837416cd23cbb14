"""The COCO and VOC loaders against hand-computed labels, and the two trees of the embedded
dataset against each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlic.data import MultiLabelDataset, make_transforms, read_coco, read_voc
from mlic.data.embedded import CLASSES
from mlic.data.voc import VOC_CLASSES


def tiny_coco() -> dict:
    return {
        "images": [
            {"id": 9, "file_name": "c.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 5, "file_name": "b.jpg", "width": 20, "height": 10},
        ],
        "categories": [  # ids out of order and non-contiguous, as in COCO
            {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
        ],
        "annotations": [
            {"id": 1, "image_id": 2, "category_id": 90, "area": 120.0, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 90, "area": 60.0, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 3, "area": 600.0, "iscrowd": 1},
            {"id": 4, "image_id": 9, "category_id": 1, "bbox": [0, 0, 4, 3], "iscrowd": 0},
        ],
    }


def test_coco_classes_by_ascending_id_images_by_id_crowd_counts_empty_images_kept(make_coco):
    root = make_coco(tiny_coco())
    index = read_coco(root, "val2014")
    assert index.class_names == ["person", "car", "toothbrush"]  # ids 1, 3, 90
    assert [p.split("/")[-1] for p in index.files] == ["a.jpg", "b.jpg", "c.jpg"]  # ids 2, 5, 9
    expected = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(index.targets, expected)
    assert not index.ignore.any()
    assert index.num_without_labels == 1
    assert index.sizes.tolist() == [[40, 30], [20, 10], [40, 30]]
    areas = index.object_areas()
    got = sorted(areas[0])  # area / (40 * 30)
    assert [c for c, _ in got] == [1, 2, 2]
    assert [a for _, a in got] == pytest.approx([0.5, 0.05, 0.1])
    assert areas[1] == [] and areas[2] == [(0, pytest.approx(12 / 1200))]  # bbox if no area
    assert index.objects.crowd.sum() == 1


def test_voc_difficult_only_classes_are_ignored_not_negative(make_voc):
    root = make_voc(
        {
            "000007": [
                ("dog", 0, (1, 1, 10, 10)),
                ("cat", 1, (5, 5, 14, 9)),
                ("dog", 1, (1, 1, 2, 2)),
            ],
            "000003": [("person", 1, (1, 1, 40, 30)), ("person", 0, (2, 2, 3, 3))],
        }
    )
    index = read_voc(root, "test")
    assert index.class_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert [p.split("/")[-1] for p in index.files] == ["000007.jpg", "000003.jpg"]  # file order
    dog, cat, person = (VOC_CLASSES.index(c) for c in ("dog", "cat", "person"))
    assert index.targets[0, dog] == 1 and not index.ignore[0, dog]
    assert index.targets[0, cat] == 0 and index.ignore[0, cat]
    assert index.targets[1, person] == 1 and not index.ignore[1, person]
    assert index.targets.sum() == 2 and index.ignore.sum() == 1
    assert index.objects.difficult.tolist() == [False, True, True, True, False]
    # Inclusive 1-based boxes: (10 - 1 + 1) * (10 - 1 + 1) = 100 px of a 40 x 30 image.
    assert index.object_areas()[0][0] == (dog, pytest.approx(100 / 1200))


def test_voc_reads_its_class_list_from_classes_txt_when_present(make_voc):
    root = make_voc({"a": [("blue-cross", 0, (1, 1, 5, 5))]}, classes=["red-circle", "blue-cross"])
    index = read_voc(root, "test")
    assert index.class_names == ["red-circle", "blue-cross"]
    assert index.targets.tolist() == [[0.0, 1.0]]
    assert read_voc(root / "VOC2007", "test").class_names == index.class_names  # VOC2007 itself


def test_the_two_trees_of_the_embedded_dataset_hold_the_same_images_and_labels(tiny_embedded_root):
    for coco_split, voc_split in (("train2014", "trainval"), ("val2014", "test")):
        coco = read_coco(tiny_embedded_root / "coco", coco_split)
        voc = read_voc(tiny_embedded_root / "voc", voc_split)
        assert coco.class_names == voc.class_names == list(CLASSES)
        assert [f.split("/")[-1] for f in coco.files] == [f.split("/")[-1] for f in voc.files]
        # A COCO label is, in VOC, either a positive or (difficult-only) an ignored pair.
        np.testing.assert_array_equal(coco.targets, voc.targets + voc.ignore)
        assert len(coco.objects) == len(voc.objects)
        # VOC's box holds the visible area that COCO records.
        assert (voc.objects.area_fraction >= coco.objects.area_fraction - 1e-6).all()


def test_dataset_items_match_the_index_and_head_keeps_the_first_images(tiny_embedded_root):
    index = read_coco(tiny_embedded_root / "coco", "val2014")
    dataset = MultiLabelDataset(index, make_transforms(32, train=False))
    assert len(dataset) == 32 and dataset.num_classes == len(CLASSES)
    image, target, ignore = dataset[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert torch.equal(target, torch.from_numpy(index.targets[3]))
    assert ignore.dtype == torch.bool and not ignore.any()
    first = MultiLabelDataset(index.head(5), make_transforms(32, train=False))
    assert len(first) == 5 and first.image_files == dataset.image_files[:5]
    assert len(first.object_areas) == 5
    assert len(first.objects) == sum(len(a) for a in dataset.object_areas[:5])
