"""AP by object size: the bucket rule at its limits, scikit-learn on the masked subset as the
oracle, hand-made cases, and the bookkeeping (counts, classes, unknown areas)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlic.metrics import (
    SIZE_BUCKETS,
    SIZE_LIMITS_PX2,
    SIZE_REFERENCE_IMAGE,
    average_precision,
    map_by_size,
    size_bucket,
)

REF = SIZE_REFERENCE_IMAGE[0] * SIZE_REFERENCE_IMAGE[1]  # 640 x 480


def fraction(px2: float, image: tuple[int, int] = SIZE_REFERENCE_IMAGE) -> float:
    return px2 / (image[0] * image[1])


def test_buckets_are_cocos_areas_at_640x480_and_scale_with_the_image():
    assert SIZE_LIMITS_PX2 == (32**2, 96**2) and REF == 307_200
    # At 640 x 480 the limits are COCOeval's, in pixels; a limit itself goes to the larger bucket.
    px = [0, 1, 1023, 1024, 9215, 9216, 100_000, REF]
    assert size_bucket([fraction(a) for a in px]).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    # A 96 x 96 image (the embedded data): the limits scale with its area, 9216 / 307200.
    small_limit = 32**2 * 96 * 96 / REF  # 30.72 px^2
    got = size_bucket([fraction(a, (96, 96)) for a in (30.0, 31.0, 276.0, 277.0)])
    assert got.tolist() == [0, 1, 1, 2] and 30.0 < small_limit < 31.0
    # Unknown areas (no instance, or none with an area) are bucket -1.
    assert size_bucket([[math.nan, 0.5]]).tolist() == [[-1, 2]]


def test_hand_made_case():
    # One class, five images: scores, labels and the largest instance's area per image.
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    labels = np.array([[1], [0], [1], [0], [1]])
    areas = np.array([[fraction(500)], [np.nan], [fraction(5000)], [np.nan], [fraction(600)]])
    got = map_by_size(scores, labels, areas)
    # small: positives at 0.9 and 0.5, the medium one (0.7) left out, negatives kept:
    # ranking 1, 0, 0, 1 -> (1/1 + 2/4) / 2 = 75 %.
    # At chance (all 24 orders of 2 positives among 4 equally likely): 49/72 = 68.06 %.
    assert got["small"] == {
        "map": pytest.approx(75.0),
        "chance_map": pytest.approx(100 * 49 / 72),
        "num_positives": 2,
        "num_classes": 1,
    }
    # medium: ranking 0, 1, 0 (the small positives left out) -> 1/2 = 50 %, not 1/3; at
    # chance 1 positive of 3: (1 + 1/2 + 1/3) / 3.
    assert got["medium"] == {
        "map": pytest.approx(50.0),
        "chance_map": pytest.approx(100 * (1 + 1 / 2 + 1 / 3) / 3),
        "num_positives": 1,
        "num_classes": 1,
    }
    assert got["large"] == {
        "map": None,
        "chance_map": None,
        "num_positives": 0,
        "num_classes": 0,
    }
    assert got["num_positives_without_area"] == 0


def sklearn_bucket_map(scores, labels, ignore, bucket, b) -> tuple[float, int]:
    """The oracle: per class, drop the ignored entries and the positives of other buckets, and
    let scikit-learn rank what is left."""
    aps = []
    for k in range(scores.shape[1]):
        keep = ~ignore[:, k] & ~((labels[:, k] == 1) & (bucket[:, k] != b))
        y = labels[keep, k]
        if y.sum() == 0:
            continue
        aps.append(100.0 * average_precision_score(y, scores[keep, k]))
    return (float(np.mean(aps)) if aps else math.nan), len(aps)


@pytest.mark.parametrize("seed", range(4))
def test_equals_sklearn_on_the_masked_subset(seed):
    rng = np.random.default_rng(seed)
    n, k = 300, 7
    scores = rng.random((n, k))  # continuous: no ties, where scikit-learn and ours agree
    labels = (rng.random((n, k)) < 0.3).astype(int)
    ignore = rng.random((n, k)) < 0.05
    # areas log-uniform over the three buckets; some positives without a known area
    areas = np.exp(rng.uniform(np.log(1e-4), np.log(0.5), (n, k)))
    areas[rng.random((n, k)) < 0.05] = np.nan
    areas[labels == 0] = np.nan  # a negative has no instance
    bucket = size_bucket(areas)
    got = map_by_size(scores, labels, areas, ignore=ignore)
    valid_pos = (labels == 1) & ~ignore
    for b, name in enumerate(SIZE_BUCKETS):
        want, classes = sklearn_bucket_map(scores, labels, ignore, bucket, b)
        assert got[name]["map"] == pytest.approx(want, abs=1e-9)
        assert got[name]["num_classes"] == classes
        assert got[name]["num_positives"] == int((valid_pos & (bucket == b)).sum())
    unknown = int((valid_pos & (bucket < 0)).sum())
    assert got["num_positives_without_area"] == unknown > 0
    total = sum(got[name]["num_positives"] for name in SIZE_BUCKETS) + unknown
    assert total == int(valid_pos.sum())


def test_negatives_count_in_every_bucket_and_areas_of_negatives_do_not_matter():
    rng = np.random.default_rng(7)
    scores = rng.random((50, 3))
    labels = (rng.random((50, 3)) < 0.4).astype(int)
    areas = np.where(labels == 1, fraction(5000), np.nan)  # every positive medium
    got = map_by_size(scores, labels, areas)
    # All positives in one bucket: that bucket's mAP is the plain mAP over all classes.
    assert got["medium"]["map"] == pytest.approx(
        float(np.nanmean(average_precision(scores, labels)))
    )
    # An area written for a negative (a difficult-only VOC object, say) changes nothing.
    noisy = np.where(labels == 1, areas, fraction(10))
    assert map_by_size(scores, labels, noisy) == got


def test_is_json_and_states_its_rule():
    got = map_by_size(np.array([[0.2, 0.9]]), np.array([[0, 1]]), np.array([[np.nan, 0.1]]))
    again = json.loads(json.dumps(got, allow_nan=False))
    assert again["limits_px2"] == [1024, 9216] and again["reference_image_px"] == [640, 480]
    assert again["limits_fraction"] == pytest.approx([1024 / REF, 9216 / REF])
    assert "largest instance" in again["rule"]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="largest_area_fraction"):
        map_by_size(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 2)))


def test_chance_is_the_mean_ap_of_random_rankings():
    """The floor a bucket's mAP is read against: the expectation over shuffled scores, which
    with a few positives among many negatives lies well above the positive rate."""
    rng = np.random.default_rng(3)
    n, k = 400, 3
    labels = (rng.random((n, k)) < 0.02).astype(int)
    labels[0] = 1  # every class has a positive
    areas = np.where(labels == 1, fraction(500), np.nan)  # all small
    chance = map_by_size(rng.random((n, k)), labels, areas)["small"]["chance_map"]
    shuffled = [float(np.mean(average_precision(rng.random((n, k)), labels))) for _ in range(4000)]
    assert chance == pytest.approx(np.mean(shuffled), rel=0.03)
    assert chance > 1.5 * 100 * labels.mean()
