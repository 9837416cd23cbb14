"""Has a run converged? The mAP its last quarter of epochs added.

A run counts as converged when, over the last quarter of its epochs, the best-so-far mAP
(best of the model and its EMA, as the run reports) rises by less than `THRESHOLD` points:
the curve has flattened, more epochs of the same schedule would add little. The running
best, not the last epoch, so that one noisy epoch neither hides nor fakes a gain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

THRESHOLD = 1.0  # mAP points over the last quarter of the epochs


def last_quarter_gain(history: Sequence[Mapping[str, Any]]) -> float:
    """Points of mAP (0-100) the best-so-far best-of(model, EMA) gained in the last quarter of
    the epochs (at least one epoch). NaN for a run of a single epoch: there is no curve."""
    best = [max(float(row["map"]), float(row["map_ema"])) for row in history]
    if len(best) < 2:
        return math.nan
    quarter = max(1, math.ceil(len(best) / 4))
    before = max(best[:-quarter])
    return max(best) - before


def converged(history: Sequence[Mapping[str, Any]], threshold: float = THRESHOLD) -> bool:
    """True when the last quarter of the epochs added less than `threshold` points of mAP."""
    gain = last_quarter_gain(history)
    return not math.isnan(gain) and gain < threshold
