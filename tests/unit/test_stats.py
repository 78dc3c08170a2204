"""Bootstrap intervals: cover the estimate, shrink with more units, pair what is paired, and
give a trend's slope with its interval."""

import math

import numpy as np
import pytest

from steerheal.stats import Interval, difference_of_means, mean_interval, paired_difference, ratio_of_means, trend


def test_the_mean_interval_covers_the_mean_and_narrows_with_more_units():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.3, 1, 20), rng.normal(0.3, 1, 400)
    a, b = mean_interval(small), mean_interval(large)
    assert a.low <= a.value <= a.high and b.low <= b.value <= b.high
    assert a.value == pytest.approx(small.mean()) and a.n == 20
    assert (b.high - b.low) < (a.high - a.low) / 2
    assert b.low <= 0.3 <= b.high
    assert mean_interval(small) == a  # fixed seed: the same numbers give the same interval


def test_pairing_removes_what_both_stages_share():
    rng = np.random.default_rng(2)
    item_effect = rng.normal(0, 3, 60)  # items differ a lot; the stage adds +0.5 to each
    before, after = item_effect, item_effect + 0.5 + rng.normal(0, 0.1, 60)
    paired = paired_difference(after, before)
    unpaired = difference_of_means(after, before)
    assert paired.side_of(0) == 1 and paired.value == pytest.approx(0.5, abs=0.05)
    assert unpaired.side_of(0) == 0  # the same shift is lost in the item spread without pairing


def test_trend_gives_the_slope_over_rounds_with_an_interval():
    rng = np.random.default_rng(3)
    units = rng.normal(0, 1, 50)
    rising = [units + 0.2 * r + rng.normal(0, 0.05, 50) for r in range(4)]
    flat = [units + rng.normal(0, 0.5, 50) for _ in range(4)]
    up, level = trend(rising), trend(flat)
    assert up.value == pytest.approx(0.2, abs=0.02) and up.side_of(0) == 1
    assert level.side_of(0) == 0
    assert math.isnan(trend([units]).value)  # one round has no trend


def test_ratio_of_means_and_the_edges():
    kept = ratio_of_means([0.5, 0.6, 0.4, 0.5], [1.0, 1.1, 0.9, 1.0])
    assert kept.value == pytest.approx(0.5) and kept.low <= 0.5 <= kept.high
    assert math.isnan(ratio_of_means([1, 2], [0, 0]).value)
    assert mean_interval([]).n == 0 and math.isnan(mean_interval([]).value)
    assert mean_interval([2.0]) == Interval(2.0, 2.0, 2.0, 1)
    assert Interval(0.1, -0.2, 0.3, 5).side_of(0) == 0 and Interval(-0.5, -0.7, -0.1, 5).side_of(0) == -1
