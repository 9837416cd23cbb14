"""The share of a class query's attention on its object's boxes (mlic.attention): exact cases
on the token grid, the even-spread baseline, and the walk over a dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlic.attention import attention_on_boxes, attention_on_objects, box_coverage
from mlic.config import load_config
from mlic.data.build import build_dataset
from mlic.models import build_model_from_config


def test_coverage_is_the_covered_share_of_each_token_cell():
    left_half = np.array([[0.0, 0.0, 0.5, 1.0]])
    assert box_coverage(left_half, 4, 4).tolist() == [[1, 1, 0, 0]] * 4
    corner = np.array([[0.0, 0.0, 0.125, 0.125]])  # half of cell (0, 0) in each direction
    cov = box_coverage(corner, 4, 4)
    assert cov[0, 0] == 0.25 and cov.sum() == 0.25
    # Two overlapping boxes count once (a union), not twice.
    twice = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]])
    assert box_coverage(twice, 2, 2).tolist() == [[1, 0], [0, 0]]


def test_a_query_on_its_object_scores_one_and_an_even_spread_scores_chance():
    boxes = np.array([[0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 0.75, 1.0]])  # cells (0,0), (2,2), (3,2)
    focused = np.zeros((4, 4))
    focused[0, 0], focused[3, 2] = 0.5, 0.5
    assert attention_on_boxes(focused, boxes) == (1.0, 3 / 16)
    even = np.full((4, 4), 1 / 16)
    on, chance = attention_on_boxes(even, boxes)
    assert on == pytest.approx(chance) and chance == 3 / 16
    elsewhere = np.zeros((4, 4))
    elsewhere[1, 3] = 1.0
    assert attention_on_boxes(elsewhere, boxes)[0] == 0.0


def test_over_a_dataset_every_true_class_with_a_box_is_one_pair(tiny_embedded_root, monkeypatch):
    cfg = load_config(
        "embedded",
        [f"data.embedded_root={tiny_embedded_root}", "data.image_size=32", "model.d_model=32",
         "model.dim_feedforward=64"],
    )  # fmt: skip
    dataset = build_dataset(cfg.data, "val")
    model = build_model_from_config(cfg.model, dataset.num_classes).eval()
    got = attention_on_objects(model, dataset, max_images=10, batch_size=4)
    expected = int((dataset.targets[:10] > 0).sum())  # COCO tree: every positive has a box
    assert got["images"] == 10 and got["pairs"] == expected > 0
    assert 0 <= got["on_object"] <= 1 and 0 < got["chance"] < 1
    # A model that spreads every query evenly scores exactly the boxes' share of the image.
    monkeypatch.setattr(
        type(model), "cross_attention", lambda self, x: torch.full((x.shape[0], 24, 2, 2), 0.25)
    )
    even = attention_on_objects(model, dataset, max_images=10, batch_size=4)
    assert even["on_object"] == pytest.approx(even["chance"]) and even["above_chance"] == 0.0


def test_label_agreement_counts_found_missed_and_false_alarms():
    from mlic.visualize import label_agreement

    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    scores = torch.tensor([[0.9, 0.6, 0.2], [0.1, 0.8, 0.3]])
    got = label_agreement(targets, scores, 0.5)
    assert got == {"images": 2, "true_labels": 3, "found": 2, "missed": 1, "false_alarms": 1,
                   "exactly_right": 1}  # fmt: skip
    # Per-class thresholds: class 1 needs 0.7, class 2 only 0.15.
    per_class = label_agreement(targets, scores, torch.tensor([0.5, 0.7, 0.15]))
    assert (per_class["found"], per_class["missed"], per_class["false_alarms"]) == (3, 0, 1)
    assert per_class["exactly_right"] == 1
