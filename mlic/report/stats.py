"""Mean ± sample std over seeds; the paired effects with their CI are `mlic.effects`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from mlic.report.records import RunRecord


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample std over seeds; NaN for fewer than two
    n: int
    runs: str  # the run names it comes from

    @staticmethod
    def of(values: list[float], names: list[str]) -> Summary:
        s = pd.Series(values, dtype=float).dropna()
        n = len(s)
        mean = float(s.mean()) if n else math.nan
        std = float(s.std(ddof=1)) if n > 1 else math.nan
        return Summary(mean, std, n, ", ".join(sorted(names)))


def summarize(records: list[RunRecord], value: Callable[[RunRecord], float]) -> Summary:
    """`value` of each record, summarised over the records (the seeds of a setting)."""
    return Summary.of([value(r) for r in records], [r.name for r in records])


def diff(a: float, b: float) -> float:
    """a - b, NaN when either is."""
    return a - b if not (math.isnan(a) or math.isnan(b)) else math.nan
