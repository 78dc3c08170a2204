"""Intervals for the instruments and the verdicts: percentile bootstrap with a fixed seed.

Every interval here resamples the *units* (axis items, drift prompts, completions), so two
stages measured on the same units are compared paired: resample the per-unit differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% bootstrap interval over `n` units."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def side_of(self, line: float = 0.0) -> int:
        """+1 if the whole interval is above `line`, -1 if below, 0 if it crosses or touches it."""
        if self.low > line:
            return 1
        if self.high < line:
            return -1
        return 0


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return arr


def _too_few(arr: np.ndarray) -> Interval | None:
    """No unit: NaN; one unit: the point is its own interval; else None (compute one)."""
    if arr.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if arr.size == 1:
        return Interval(float(arr[0]), float(arr[0]), float(arr[0]), 1)
    return None


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def mean_interval(values: Sequence[float], n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL) -> Interval:
    """Mean over units with a percentile-bootstrap interval (resampling units). One unit: the
    interval is the point; none: NaN."""
    arr = _clean(values)
    trivial = _too_few(arr)
    if trivial is not None:
        return trivial
    mean = float(arr.mean())
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    lo, hi = _percentiles(means, level)
    return Interval(mean, min(lo, mean), max(hi, mean), int(arr.size))


def paired_difference(a: Sequence[float], b: Sequence[float], **kw) -> Interval:
    """Mean of a - b over units measured in both (same order), with its bootstrap interval."""
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} vs {len(b)}")
    return mean_interval([x - y for x, y in zip(a, b) if x is not None and y is not None], **kw)


def difference_of_means(a: Sequence[float], b: Sequence[float], n_boot: int = N_BOOT, seed: int = SEED,
                        level: float = LEVEL) -> Interval:
    """mean(a) - mean(b) for two independent groups, resampling each group."""
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        return Interval(math.nan, math.nan, math.nan, int(x.size + y.size))
    diff = float(x.mean() - y.mean())
    rng = np.random.default_rng(seed)
    boot = (x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
            - y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1))
    lo, hi = _percentiles(boot, level)
    return Interval(diff, min(lo, diff), max(hi, diff), int(x.size + y.size))


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS slope of each row of y (..., R) on x (R,)."""
    xc = x - x.mean()
    return ((y - y.mean(axis=-1, keepdims=True)) * xc).sum(axis=-1) / (xc ** 2).sum()


def trend(per_round: Sequence[Sequence[float]], n_boot: int = N_BOOT, seed: int = SEED,
          level: float = LEVEL) -> Interval:
    """Slope per round of the mean over units, for units measured in every round
    (per_round[r][u]); the interval resamples units. Fewer than two rounds: NaN."""
    if len(per_round) < 2:
        return Interval(math.nan, math.nan, math.nan, 0)
    width = min(len(r) for r in per_round)
    y = np.asarray([list(r)[:width] for r in per_round], dtype=float).T  # (units, rounds)
    y = y[np.isfinite(y).all(axis=1)]
    if y.shape[0] == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    x = np.arange(y.shape[1], dtype=float)
    slope = float(_slopes(x, y.mean(axis=0)))
    if y.shape[0] == 1:
        return Interval(slope, slope, slope, 1)
    rng = np.random.default_rng(seed)
    boot = _slopes(x, y[rng.integers(0, y.shape[0], size=(n_boot, y.shape[0]))].mean(axis=1))
    lo, hi = _percentiles(boot, level)
    return Interval(slope, min(lo, slope), max(hi, slope), int(y.shape[0]))


def ratio_of_means(num: Sequence[float], den: Sequence[float], n_boot: int = N_BOOT, seed: int = SEED,
                   level: float = LEVEL) -> Interval:
    """mean(num) / mean(den) over paired units, resampling units (e.g. the share of the
    steered shift the healed model kept). NaN when the denominator's mean is 0."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size == 0 or b.mean() == 0:
        return Interval(math.nan, math.nan, math.nan, int(a.size))
    value = float(a.mean() / b.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    dens = b[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = a[idx].mean(axis=1) / dens
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return Interval(value, value, value, int(a.size))
    lo, hi = _percentiles(boot, level)
    return Interval(value, min(lo, value), max(hi, value), int(a.size))


# Student's t, 97.5th percentile, for 1..30 degrees of freedom (beyond: 1.96 is within 2%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def seed_interval(values: Sequence[float]) -> Interval:
    """Mean over a few independent runs (seeds) with a 95% t interval: with 3 seeds a bootstrap
    interval is far too narrow. One run: the point."""
    arr = _clean(values)
    trivial = _too_few(arr)
    if trivial is not None:
        return trivial
    mean = float(arr.mean())
    t = _T975[arr.size - 2] if arr.size - 1 <= len(_T975) else 1.96
    half = t * float(arr.std(ddof=1)) / math.sqrt(arr.size)
    return Interval(mean, mean - half, mean + half, int(arr.size))
