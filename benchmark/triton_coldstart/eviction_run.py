"""Step 4: round-robin passes over the eviction instances under the budget; cold starts, evictions, peak bytes."""

from __future__ import annotations

import time
from typing import Any

from .client import Answer
from .metrics import METRICS_SETTLE_S, scrape_metrics
from .progress import say
from .residency_watch import ResidencyWatch, resident, used_bytes
from .session import Session


class EvictionRun:
    """The eviction run's counts (`summary`, the JSON's ``eviction_run``) and its cold answers (`samples`)."""

    def __init__(self, session: Session, residency: ResidencyWatch) -> None:
        self.session, self.residency = session, residency
        self.summary: dict[str, Any] = {}
        self.samples: list[Answer] = []  # cold answers after an instance's first: the eviction row's cold starts

    def run(self) -> None:
        """Round-robin passes over the eviction instances under the budget (step 4)."""
        s = self.session
        assert s.cfg is not None
        time.sleep(METRICS_SETTLE_S)
        before = scrape_metrics(s.cfg.url("metrics"))
        prev = resident(self.residency.snapshot())
        requests = colds = wrong = transitions = 0
        peak = 0
        for r in range(s.args.rounds):
            for name in s.evicts:
                a = s.ask(name)
                requests, colds, wrong = requests + 1, colds + int(a.cold), wrong + int(not a.correct)
                if a.cold and s.stats[name].answers > 1:  # an instance's first answer pays one-time costs
                    self.samples.append(a)
                snap = self.residency.snapshot()
                now = resident(snap)
                transitions += sum(1 for k, was in prev.items() if was and not now.get(k, False))
                prev, peak = now, max(peak, used_bytes(snap))
            say(f"eviction run: round {r + 1}/{s.args.rounds} done, {colds} cold starts, {wrong} wrong so far")
        time.sleep(METRICS_SETTLE_S)
        after = scrape_metrics(s.cfg.url("metrics"))

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        budget = s.lay.budget
        self.summary = {
            "requests": requests,
            "cold_starts": colds,
            "wrong": wrong,
            "evictions_observed": transitions,
            "evictions_metric_delta": delta("deepplan_evictions_total"),
            "cold_starts_metric_delta": delta("deepplan_cold_starts_total"),
            "peak_used_bytes": peak,
            "budget_bytes": budget,
            "budget_respected": peak <= budget,
            "metrics_after": after,
        }
        say(
            f"eviction run: {requests} requests, {colds} cold starts, {transitions} evictions, peak "
            f"{peak / 2**20:.1f} MiB of {budget / 2**20:.1f} MiB budget, all correct: {wrong == 0}"
        )
