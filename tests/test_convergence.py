"""The convergence criterion: the mAP the last quarter of the epochs added."""

from __future__ import annotations

import math

import pytest

from mlic.convergence import converged, last_quarter_gain


def rows(maps, emas=None):
    emas = emas if emas is not None else [0.0] * len(maps)
    return [{"map": m, "map_ema": e} for m, e in zip(maps, emas, strict=True)]


def test_gain_is_the_running_best_of_model_and_ema_over_the_last_quarter():
    # 8 epochs: the last quarter is epochs 7-8; best before: max(50, ema 55) = 55; after: 57
    history = rows([10, 20, 30, 40, 45, 50, 56, 54], [5, 15, 25, 35, 44, 55, 57, 56])
    assert last_quarter_gain(history) == pytest.approx(2.0)
    assert not converged(history)


def test_a_flat_curve_is_converged_and_a_dip_is_not_a_negative_gain():
    history = rows([10, 40, 60, 61, 61.5, 61.2, 61.4, 60.0])
    assert last_quarter_gain(history) == pytest.approx(0.0)
    assert converged(history)


def test_quarter_rounds_up_and_one_epoch_has_no_curve():
    # 5 epochs -> the last 2 epochs form the "quarter" (ceil(5 / 4))
    assert last_quarter_gain(rows([10, 20, 30, 30.5, 30.9])) == pytest.approx(0.9)
    assert math.isnan(last_quarter_gain(rows([42.0])))
    assert not converged(rows([42.0]))
