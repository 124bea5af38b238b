"""Synthetic Poisson schedule (paper Fig. 12/13): rate, exponential gaps, uniform instance choice."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest.schedule import Schedule, ScheduleError, poisson_schedule


def test_count_matches_rate_times_duration():
    rate, duration = 100.0, 600.0
    s = poisson_schedule(instances=20, rate=rate, duration_s=duration, seed=0)
    expected = rate * duration
    assert abs(len(s) - expected) < 4 * np.sqrt(expected)
    assert s.expected_rate == rate and s.scheduled_rate == pytest.approx(rate, rel=0.02)


def test_gaps_are_exponential():
    s = poisson_schedule(instances=1, rate=50.0, duration_s=2000.0, seed=1)
    gaps = np.diff(s.times_s)
    assert gaps.mean() == pytest.approx(1 / 50.0, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)
    # Exponential: P(gap > mean) = e^-1.
    assert (gaps > gaps.mean()).mean() == pytest.approx(np.exp(-1), abs=0.01)


def test_counts_per_window_have_poisson_dispersion():
    s = poisson_schedule(instances=1, rate=20.0, duration_s=2000.0, seed=2)
    per_second = np.bincount(s.times_s.astype(int), minlength=2000)
    assert per_second.var() / per_second.mean() == pytest.approx(1.0, abs=0.1)


def test_instances_are_chosen_uniformly():
    n = 10
    s = poisson_schedule(instances=n, rate=100.0, duration_s=500.0, seed=3)
    counts = np.bincount(s.instances, minlength=n)
    expected = len(s) / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 27.9  # 9 degrees of freedom, p = 0.001
    assert counts.min() > 0


def test_seeded_and_sorted_within_duration():
    a = poisson_schedule(5, 30.0, 10.0, seed=7)
    b = poisson_schedule(5, 30.0, 10.0, seed=7)
    np.testing.assert_array_equal(a.times_s, b.times_s)
    np.testing.assert_array_equal(a.instances, b.instances)
    assert np.all(np.diff(a.times_s) >= 0)
    assert a.times_s[0] >= 0 and a.times_s[-1] < 10.0


def test_short_schedules_still_cover_the_whole_duration():
    # Tiny expected count: the first chunk of gaps may end early and must be topped up.
    for seed in range(50):
        s = poisson_schedule(1, 0.5, 40.0, seed=seed)
        assert all(t < 40.0 for t in s.times_s)


@pytest.mark.parametrize(("instances", "rate", "duration"), [(0, 1.0, 1.0), (1, 0.0, 1.0), (1, 1.0, -1.0)])
def test_bad_arguments(instances, rate, duration):
    with pytest.raises(ScheduleError):
        poisson_schedule(instances, rate, duration)


def test_schedule_validates_itself():
    with pytest.raises(ScheduleError, match="sorted"):
        Schedule(np.array([1.0, 0.5]), np.array([0, 0]), 2.0, 1, 1.0)
    with pytest.raises(ScheduleError, match="instance"):
        Schedule(np.array([0.5]), np.array([3]), 2.0, 2, 1.0)
    with pytest.raises(ScheduleError, match=r"\[0, 2.0\)"):
        Schedule(np.array([2.5]), np.array([0]), 2.0, 1, 1.0)
