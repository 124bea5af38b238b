"""What each served model met during a run (answers, cold starts, latencies), and the medians the rows report."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .client import Answer


def median_ms(values: Sequence[float], q: float | None = None) -> float | None:
    """The median of `values` (their `q`-th percentile with `q`); None when there are none."""
    if not values:
        return None
    return float(statistics.median(values) if q is None else np.percentile(values, q))


@dataclass
class ModelStats:
    """What one served model met during the run."""

    first: Answer | None = None
    warm: list[float] = field(default_factory=list)
    colds: list[Answer] = field(default_factory=list)
    cold_starts: int = 0
    answers: int = 0
    wrong: int = 0
    max_abs_diff: float = 0.0
    loads: dict[str, float | bool | None] = field(default_factory=dict)

    def count(self, a: Answer) -> Answer:
        """Account one answer of this model."""
        self.answers += 1
        self.cold_starts += int(a.cold)
        self.wrong += int(not a.correct)
        self.max_abs_diff = max(self.max_abs_diff, a.max_abs_diff)
        return a


def all_correct(stats: Mapping[str, ModelStats]) -> bool:
    """Every answer (and both load checks) matched the reference, and there were answers."""
    answers = sum(s.answers for s in stats.values())
    loads_ok = all(v is not False for s in stats.values() for k, v in s.loads.items() if "correct" in k)
    return answers > 0 and all(s.wrong == 0 for s in stats.values()) and loads_ok
