"""Arrival schedules: when each request is sent and to which model instance.

A schedule is fixed before the test starts, so the dispatcher never waits for responses (open loop):
the n-th request is sent at ``times_s[n]`` whatever happened to the earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ScheduleError(ValueError):
    """An arrival schedule cannot be built from the given parameters."""


@dataclass(frozen=True)
class Schedule:
    """Arrival times (seconds from the start of the test) and the model instance of each request.

    Attributes:
        times_s: float64 [R], sorted ascending, each in ``[0, duration_s)``.
        instances: int64 [R], model instance index of each request, in ``[0, num_instances)``.
        duration_s: length of the schedule in seconds (the last arrival may come well before it).
        num_instances: number of model instances the requests are spread over.
        expected_rate: mean rate of the arrival process in requests per second (what the draws
            aim at; ``len(self) / duration_s`` is what this particular draw achieved).
        description: human-readable origin, written into the summary.
    """

    times_s: np.ndarray
    instances: np.ndarray
    duration_s: float
    num_instances: int
    expected_rate: float
    description: str = ""

    def __post_init__(self) -> None:
        if self.times_s.shape != self.instances.shape or self.times_s.ndim != 1:
            raise ScheduleError(
                f"times_s {self.times_s.shape} and instances {self.instances.shape} must be 1-D of equal length"
            )
        if self.duration_s <= 0 or self.num_instances <= 0:
            raise ScheduleError(f"duration_s ({self.duration_s}) and num_instances ({self.num_instances}) must be > 0")
        if len(self.times_s):
            if np.any(np.diff(self.times_s) < 0):
                raise ScheduleError("times_s must be sorted ascending")
            if self.times_s[0] < 0 or self.times_s[-1] >= self.duration_s:
                raise ScheduleError(f"arrival times must lie in [0, {self.duration_s}) s")
            if self.instances.min() < 0 or self.instances.max() >= self.num_instances:
                raise ScheduleError(f"instance indices must lie in [0, {self.num_instances})")

    def __len__(self) -> int:
        return int(self.times_s.shape[0])

    @property
    def scheduled_rate(self) -> float:
        """Requests per second of this draw: ``len(self) / duration_s``."""
        return len(self) / self.duration_s


def poisson_schedule(instances: int, rate: float, duration_s: float, seed: int = 0) -> Schedule:
    """Poisson arrivals at ``rate`` req/s for ``duration_s``, each to an instance chosen uniformly.

    This is the workload of the paper's Fig. 12/13 (N instances, uniform choice, Poisson arrivals).

    Args:
        instances: number of model instances N (> 0).
        rate: total arrival rate in requests per second (> 0).
        duration_s: length of the schedule in seconds (> 0).
        seed: seed of the random generator; equal seeds give equal schedules.
    """
    if instances <= 0:
        raise ScheduleError(f"instances must be > 0, got {instances}")
    if rate <= 0 or duration_s <= 0:
        raise ScheduleError(f"rate ({rate}) and duration_s ({duration_s}) must be > 0")
    rng = np.random.default_rng(seed)
    # Exponential gaps summed until past the end: draw a few sigma more than expected, top up if short.
    expected = rate * duration_s
    chunk = int(expected + 6 * np.sqrt(expected) + 16)
    times = np.cumsum(rng.exponential(1.0 / rate, size=chunk))
    while times[-1] < duration_s:
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate, size=chunk))])
    times = times[times < duration_s]
    chosen = rng.integers(0, instances, size=times.shape[0])
    return Schedule(
        times_s=times.astype(np.float64),
        instances=chosen.astype(np.int64),
        duration_s=float(duration_s),
        num_instances=instances,
        expected_rate=float(rate),
        description=f"synthetic Poisson: {rate:g} req/s, {instances} instances uniform, {duration_s:g} s, seed {seed}",
    )
