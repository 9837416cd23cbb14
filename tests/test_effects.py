"""Paired differences over seeds and their 95 % CI: scipy's paired t-test as the oracle, a
hand-computed case, the verdict read off the interval, and too few seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mlic.effects import paired_effect


def test_hand_computed_interval():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.3027 -> 2 ± 2.4842
    e = paired_effect({0: 11.0, 1: 12.0, 2: 13.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert e.n == 3 and e.seeds == (0, 1, 2) and e.mean == pytest.approx(2.0)
    assert e.low == pytest.approx(2 - 4.302652729911275 / math.sqrt(3))
    assert e.high == pytest.approx(2 + 4.302652729911275 / math.sqrt(3))
    assert not e.resolved and e.verdict("A better", "B better") == "not resolved (CI includes 0)"


@pytest.mark.parametrize("seed", range(3))
def test_equals_scipys_paired_t_interval(seed):
    rng = np.random.default_rng(seed)
    n = 5
    a = rng.normal(40, 1, n)
    b = a - rng.normal(0.8, 0.5, n)  # A better by about 0.8, seed by seed
    e = paired_effect(dict(enumerate(a)), dict(enumerate(b)))
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high))
    assert e.mean == pytest.approx(float(np.mean(a - b)))


def test_pairs_by_seed_not_by_position_and_reports_the_unpaired():
    a = {2: 30.0, 0: 31.0, 1: 32.0, 7: 99.0}
    b = {0: 30.0, 1: 31.5, 2: 29.0, 5: 0.0}
    e = paired_effect(a, b)
    assert e.seeds == (0, 1, 2) and e.unpaired == (5, 7)
    assert e.mean == pytest.approx(((31 - 30) + (32 - 31.5) + (30 - 29)) / 3)


def test_verdict_follows_the_sign_of_an_interval_that_excludes_zero():
    better = paired_effect({s: 10.0 + 0.1 * s for s in range(4)}, {s: 9.0 for s in range(4)})
    assert better.low > 0 and better.resolved
    assert (
        better.verdict("ResNeSt better", "ResNet better")
        == "resolved: ResNeSt better (CI excludes 0)"
    )
    worse = paired_effect({s: 9.0 for s in range(4)}, {s: 10.0 + 0.1 * s for s in range(4)})
    assert worse.high < 0 and worse.verdict("x", "ResNet better").startswith("resolved: ResNet")


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_pairs_give_no_interval(n):
    e = paired_effect({s: 5.0 for s in range(n)}, {s: 4.0 for s in range(n)})
    assert e.n == n and math.isnan(e.low) and math.isnan(e.high) and not e.resolved
    assert e.verdict("a", "b").startswith(f"no CI: {n} paired seed")
    assert math.isnan(e.mean) == (n == 0)
