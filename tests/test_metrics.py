"""Metrics against oracles: brute force over tie orders, scikit-learn, hand-computed cases,
slow loop references of ML-GCN's definitions, and invariances."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from mlic.metrics import (
    average_precision,
    compute_metrics,
    mean_average_precision,
    threshold_metrics,
    topk_metrics,
)

# --------------------------------------------------------------------------- slow references


def ap_of_ranking(labels: list[int]) -> float:
    """ASL's AP for one ranking (best first): mean precision at the rank of each positive."""
    hits, total = 0, 0.0
    for rank, label in enumerate(labels, start=1):
        if label:
            hits += 1
            total += hits / rank
    return 100.0 * total / hits


def brute_force_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """The mean of ASL's AP over every ranking that sorts the scores non-increasingly."""
    values = []
    for perm in itertools.permutations(range(len(scores))):
        if all(scores[perm[i]] >= scores[perm[i + 1]] for i in range(len(perm) - 1)):
            values.append(ap_of_ranking([int(targets[i]) for i in perm]))
    return sum(values) / len(values)


def loop_counts(pred: np.ndarray, targets: np.ndarray, valid: np.ndarray):
    n, k = pred.shape
    nc, npred, ngt = [0] * k, [0] * k, [0] * k
    for i in range(n):
        for j in range(k):
            if not valid[i, j]:
                continue
            nc[j] += int(pred[i, j] and targets[i, j])
            npred[j] += int(pred[i, j])
            ngt[j] += int(targets[i, j])
    return nc, npred, ngt


def loop_six(nc, npred, ngt) -> dict[str, float]:
    """ML-GCN's evaluation(), over classes with positives, with the true sum of Np for OP."""
    classes = [j for j in range(len(ngt)) if ngt[j] > 0]
    cp = sum(nc[j] / (npred[j] if npred[j] else 1) for j in classes) / len(classes)
    cr = sum(nc[j] / ngt[j] for j in classes) / len(classes)
    op = sum(nc) / sum(npred) if sum(npred) else 0.0
    orr = sum(nc) / sum(ngt)

    def f1(p, r):
        return 2 * p * r / (p + r) if p + r else 0.0

    return {
        k: 100 * v
        for k, v in dict(cp=cp, cr=cr, cf1=f1(cp, cr), op=op, or_=orr, of1=f1(op, orr)).items()
    }


def loop_threshold(probs, targets, threshold, valid):
    pred = probs >= threshold
    return loop_six(*loop_counts(pred, targets, valid))


def loop_topk(probs, targets, k, threshold, valid):
    n, c = probs.shape
    pred = np.zeros((n, c), dtype=bool)
    for i in range(n):
        ranked = sorted((j for j in range(c) if valid[i, j]), key=lambda j: (-probs[i, j], j))
        for j in ranked[:k]:
            pred[i, j] = probs[i, j] >= threshold
    return loop_six(*loop_counts(pred, targets, valid))


def assert_six(got: dict, want: dict) -> None:
    for key in ("cp", "cr", "cf1", "op", "of1"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert got["or"] == pytest.approx(want["or_"], abs=1e-9)


def random_case(rng, n, k, levels=None, p=0.3):
    targets = rng.random((n, k)) < p
    targets[0] = True  # every class has a positive
    scores = rng.integers(0, levels, size=(n, k)) / levels if levels else rng.random((n, k))
    return scores, targets


# --------------------------------------------------------------------------- AP


def test_hand_computed_ap():
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    ap = average_precision(np.array([[0.9], [0.8], [0.7], [0.6]]), np.array([[1], [0], [1], [0]]))
    assert ap[0] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_hand_computed_tie():
    # ranks: neg, {pos, neg} tied, pos. Order (pos, neg): (1/2 + 2/4)/2; order (neg, pos):
    # (1/3 + 2/4)/2; the expectation over the two orders is 11/24.
    scores = np.array([[0.9], [0.5], [0.5], [0.1]])
    targets = np.array([[0], [1], [0], [1]])
    assert average_precision(scores, targets)[0] == pytest.approx(100 * 11 / 24)


@pytest.mark.parametrize("seed", range(12))
def test_ties_equal_expectation_over_orders(seed):
    rng = np.random.default_rng(seed)
    n = 7 if seed < 3 else 6
    scores, targets = random_case(rng, n, 2, levels=3, p=0.45)
    got = average_precision(scores, targets)
    for j in range(2):
        assert got[j] == pytest.approx(brute_force_ap(scores[:, j], targets[:, j]), abs=1e-9)


def test_all_tied_scores_give_expected_ap():
    # A constant predictor: its expected AP over orders, by brute force.
    targets = np.array([[1], [0], [0], [1], [0], [1]])
    scores = np.zeros((6, 1))
    assert average_precision(scores, targets)[0] == pytest.approx(
        brute_force_ap(scores[:, 0], targets[:, 0])
    )


def test_ties_of_one_label_equal_asl_exactly():
    # A tie among positives only (sigmoid saturated at 1.0) does not depend on the order.
    scores = np.array([[1.0], [1.0], [1.0], [0.7], [0.6]])
    targets = np.array([[1], [1], [0], [1], [0]])
    scores[2] = 0.9  # the negative is not tied
    expected = ap_of_ranking([1, 1, 0, 1, 0])
    assert average_precision(scores, targets)[0] == pytest.approx(expected)


@pytest.mark.parametrize(("n", "k"), [(30, 3), (200, 5), (1000, 7)])
def test_equals_sklearn_without_ties(n, k):
    rng = np.random.default_rng(n)
    scores, targets = random_case(rng, n, k, p=0.1)
    want = [100 * average_precision_score(targets[:, j], scores[:, j]) for j in range(k)]
    np.testing.assert_allclose(average_precision(scores, targets), want, rtol=0, atol=1e-10)


def test_does_not_depend_on_row_order_with_ties():
    rng = np.random.default_rng(0)
    scores, targets = random_case(rng, 500, 6, levels=5)
    ignore = rng.random(scores.shape) < 0.1
    base = average_precision(scores, targets, ignore)
    for _ in range(5):
        perm = rng.permutation(len(scores))
        again = average_precision(scores[perm], targets[perm], ignore[perm])
        assert np.array_equal(base, again)  # bit-identical, not just close


def test_columns_are_independent():
    rng = np.random.default_rng(1)
    scores, targets = random_case(rng, 100, 5, levels=4)
    perm = rng.permutation(5)
    np.testing.assert_array_equal(
        average_precision(scores[:, perm], targets[:, perm]),
        average_precision(scores, targets)[perm],
    )


def test_monotone_transform_keeps_ap():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(300, 4))
    targets = rng.random((300, 4)) < 0.2
    np.testing.assert_allclose(
        average_precision(logits, targets),
        average_precision(1 / (1 + np.exp(-logits)), targets),
        atol=1e-10,
    )


def test_ignore_equals_dropping_the_entries():
    rng = np.random.default_rng(3)
    scores, targets = random_case(rng, 60, 4, levels=6)
    ignore = rng.random(scores.shape) < 0.25
    ignore[0] = False
    got = average_precision(scores, targets, ignore)
    for j in range(4):
        keep = ~ignore[:, j]
        want = average_precision(scores[keep, j : j + 1], targets[keep, j : j + 1])[0]
        assert got[j] == pytest.approx(want, abs=1e-10)


def test_ignored_positive_with_nan_score_is_left_out():
    scores = np.array([[0.9], [np.nan], [0.2], [0.1]])
    targets = np.array([[1], [1], [0], [1]])
    ignore = np.array([[False], [True], [False], [False]])
    assert average_precision(scores, targets, ignore)[0] == pytest.approx(ap_of_ranking([1, 0, 1]))


def test_class_without_positives_is_nan_and_left_out_of_the_mean():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.4, 0.3, 0.5]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    ap = average_precision(scores, targets)
    assert np.isnan(ap[2]) and not np.isnan(ap[:2]).any()
    m, n = mean_average_precision(scores, targets)
    assert n == 2
    assert m == pytest.approx(ap[:2].mean())
    m0, n0 = mean_average_precision(scores, np.zeros_like(targets))
    assert math.isnan(m0) and n0 == 0


def test_perfect_and_worst_rankings():
    targets = np.array([[1], [1], [0], [0]])
    assert average_precision(np.array([[4], [3], [2], [1]]), targets)[0] == pytest.approx(100)
    worst = average_precision(np.array([[1], [2], [3], [4]]), targets)[0]
    assert worst == pytest.approx(100 * (1 / 3 + 2 / 4) / 2)


def test_torch_inputs_match_numpy():
    rng = np.random.default_rng(4)
    scores, targets = random_case(rng, 50, 3)
    want = average_precision(scores.astype(np.float32), targets)
    got = average_precision(torch.from_numpy(scores).float(), torch.from_numpy(targets).long())
    np.testing.assert_array_equal(got, want)
    # bf16 scores (autocast outputs) are accepted; their ties are handled like any other.
    bf = torch.from_numpy(scores).bfloat16()
    got_bf = average_precision(bf, torch.from_numpy(targets))
    np.testing.assert_array_equal(got_bf, average_precision(bf.float().numpy(), targets))


@pytest.mark.parametrize(
    ("scores", "targets", "ignore", "message"),
    [
        (np.zeros((3, 2)), np.array([[0.5, 0], [1, 0], [0, 1]]), None, "0/1"),
        (np.zeros((3, 2)), np.zeros((3, 3)), None, r"\[N, K\]"),
        (np.zeros(3), np.zeros(3), None, r"\[N, K\]"),
        (np.array([[np.nan], [0.1]]), np.array([[1], [0]]), None, "NaN"),
        (np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 1), dtype=bool), "ignore"),
    ],
)
def test_bad_input(scores, targets, ignore, message):
    with pytest.raises(ValueError, match=message):
        average_precision(scores, targets, ignore)


# --------------------------------------------------------------------------- CP CR CF1 OP OR OF1


def test_threshold_metrics_hand_computed():
    probs = np.array([[0.9, 0.6, 0.1], [0.4, 0.7, 0.2], [0.8, 0.3, 0.5]])
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    # predicted (>= 0.5): class0 {0, 2}, class1 {0, 1}, class2 {2}
    # Nc = [1, 1, 1], Np = [2, 2, 1], Ng = [2, 1, 1]
    got = threshold_metrics(probs, targets)
    cp, cr = (0.5 + 0.5 + 1) / 3, (0.5 + 1 + 1) / 3
    assert got["cp"] == pytest.approx(100 * cp)
    assert got["cr"] == pytest.approx(100 * cr)
    assert got["cf1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert got["op"] == pytest.approx(100 * 3 / 5)
    assert got["or"] == pytest.approx(100 * 3 / 4)
    assert got["of1"] == pytest.approx(100 * 2 * 0.6 * 0.75 / 1.35)


def test_class_never_predicted_has_precision_zero():
    probs = np.array([[0.9, 0.1], [0.2, 0.3]])
    targets = np.array([[1, 1], [0, 0]])
    got = threshold_metrics(probs, targets)
    assert got["cp"] == pytest.approx(50.0)  # class 0: 1/1, class 1: Np = 0 -> 0
    assert got["cr"] == pytest.approx(50.0)


def test_threshold_is_inclusive():
    got = threshold_metrics(np.array([[0.5], [0.49]]), np.array([[1], [0]]))
    assert got["op"] == 100.0 and got["or"] == 100.0


@pytest.mark.parametrize("seed", range(4))
def test_threshold_and_topk_match_loop_references(seed):
    rng = np.random.default_rng(seed)
    probs, targets = random_case(rng, 40, 6, levels=10 if seed % 2 else None, p=0.25)
    ignore = rng.random(probs.shape) < (0.15 if seed >= 2 else 0.0)
    ignore[0] = False
    valid = ~ignore
    for threshold in (0.3, 0.5):
        assert_six(
            threshold_metrics(probs, targets, threshold, ignore),
            loop_threshold(probs, targets, threshold, valid),
        )
        for k in (1, 3):
            assert_six(
                topk_metrics(probs, targets, k, ignore, threshold),
                loop_topk(probs, targets, k, threshold, valid),
            )


def test_topk_ties_go_to_the_lower_class_index():
    probs = np.array([[0.9, 0.9, 0.9]])
    targets = np.array([[0, 0, 1]])
    assert topk_metrics(probs, targets, k=2)["or"] == 0.0  # classes 0 and 1 win the tie
    assert topk_metrics(probs, targets, k=3)["or"] == 100.0


def test_topk_needs_the_threshold_too():
    # ML-GCN's overall_topk: a top-k label below the threshold is not predicted.
    probs = np.array([[0.9, 0.4, 0.3]])
    targets = np.array([[1, 1, 0]])
    got = topk_metrics(probs, targets, k=3)
    assert got["op"] == 100.0 and got["or"] == 50.0


def test_probabilities_are_checked():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold_metrics(np.array([[2.3], [-1.0]]), np.array([[1], [0]]))
    with pytest.raises(ValueError, match="k must"):
        topk_metrics(np.array([[0.3]]), np.array([[1]]), k=0)


# --------------------------------------------------------------------------- compute_metrics


def test_compute_metrics_is_json_and_consistent():
    rng = np.random.default_rng(5)
    probs, targets = random_case(rng, 80, 4, levels=20)
    targets[:, 3] = False  # a class without positives
    names = ["cat", "dog", "car", "kite"]
    out = compute_metrics(torch.from_numpy(probs), torch.from_numpy(targets), class_names=names)
    json.dumps(out, allow_nan=False)  # valid JSON: no NaN anywhere
    assert out["num_images"] == 80 and out["threshold"] == 0.5
    assert out["num_classes_evaluated"] == 3
    assert out["classes_without_positives"] == ["kite"]
    assert list(out["per_class_ap"]) == names and out["per_class_ap"]["kite"] is None
    aps = [out["per_class_ap"][n] for n in names[:3]]
    assert out["map"] == pytest.approx(sum(aps) / 3)
    assert out["map"] == pytest.approx(mean_average_precision(probs, targets)[0])
    six = threshold_metrics(probs, targets)
    top = topk_metrics(probs, targets, k=3)
    for key in ("cp", "cr", "cf1", "op", "or", "of1"):
        assert out[key] == pytest.approx(six[key])
        assert out[f"{key}_top3"] == pytest.approx(top[key])


def test_compute_metrics_names_and_empty_classes():
    probs = np.array([[0.2, 0.7], [0.6, 0.1]])
    out = compute_metrics(probs, np.zeros((2, 2)))
    assert out["map"] is None and out["num_classes_evaluated"] == 0
    assert out["classes_without_positives"] == ["0", "1"]
    with pytest.raises(ValueError, match="class_names"):
        compute_metrics(probs, np.zeros((2, 2)), class_names=["a"])
