"""An ablation effect with its uncertainty: the mean difference paired by seed and its 95 % CI.

Two configurations trained with the same seeds share the seed's data order, augmentation and
initialisation; the difference taken seed by seed removes that shared part of the noise, so
the paired difference is the sharper test of "does A beat B" (a paired t-test). With n paired
seeds the interval is mean ± t(0.975, n-1) · sd / sqrt(n) (Student's t, n-1 degrees of
freedom). The verdict is read off the interval: it resolves the effect when it excludes 0.
Fewer than two pairs give no interval (there is no spread to measure), and say so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedEffect:
    """Mean of a - b over the seeds both have, with its CI; NaN where it cannot be computed."""

    mean: float
    low: float  # CI bounds; NaN for fewer than two pairs
    high: float
    n: int  # paired seeds
    seeds: tuple[object, ...]  # the seeds paired, sorted
    unpaired: tuple[object, ...]  # seeds only one side has

    @property
    def resolved(self) -> bool:
        """The CI excludes 0."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def verdict(self, better_a: str, better_b: str) -> str:
        """In words, from the CI: which side is better where the CI excludes 0."""
        if self.n < 2:
            return f"no CI: {self.n} paired seed{'s' if self.n != 1 else ''} (2 or more needed)"
        if self.low > 0:
            return f"resolved: {better_a} (CI excludes 0)"
        if self.high < 0:
            return f"resolved: {better_b} (CI excludes 0)"
        return "not resolved (CI includes 0)"


def _seed_key(seed: object) -> tuple[int, object]:
    return (0, seed) if isinstance(seed, int) else (1, str(seed))  # numbers first, in order


def paired_effect(a: Mapping[object, float], b: Mapping[object, float]) -> PairedEffect:
    """The effect a - b from values keyed by seed (e.g. mAP of run A and run B per seed)."""
    seeds = tuple(sorted(set(a) & set(b), key=_seed_key))
    unpaired = tuple(sorted(set(a) ^ set(b), key=_seed_key))
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n if n else math.nan
    if n < 2:
        return PairedEffect(mean, math.nan, math.nan, n, seeds, unpaired)
    from scipy import stats  # here: importing the report should not pay for scipy

    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return PairedEffect(mean, mean - half, mean + half, n, seeds, unpaired)
