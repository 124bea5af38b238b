"""Catch a slow device job in the act: every thread's Python stack, printed while the job is still running.

``DEEPPLAN_STALL_DUMP_MS=80`` in the server's environment makes each engine host print the stacks of all its
threads when one device job (a request's budget and forward, an eviction) has run longer than 80 ms, at most
`MAX_DUMPS` times per host. Why: under load, an engine host has been seen to stall for 0.3-0.5 s once, early in a
run, holding up every model of its GPU (Fig. 12 on 4 x H100, 40 BERT-Bases: warm requests of 130-365 ms within
the first second, none later), and the request traces only say that the time went somewhere on the device
thread. The dump comes from `faulthandler`'s own watchdog thread, so it shows the stall even when the GIL is
held by another thread.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time
from collections.abc import Callable
from typing import TypeVar

STALL_DUMP_ENV = "DEEPPLAN_STALL_DUMP_MS"
MAX_DUMPS = 20
"""Dumps per process: a host that is slow all the time should not flood the server's log."""
T = TypeVar("T")


class StallReport:
    """Runs device jobs under a watchdog that dumps every thread's stack when one outlives `limit_ms`."""

    def __init__(self, limit_ms: float) -> None:
        if limit_ms <= 0:
            raise ValueError(f"{STALL_DUMP_ENV} must be a positive number of milliseconds, got {limit_ms:g}")
        self.limit_s = limit_ms / 1e3
        self.dumps = 0

    @classmethod
    def from_environment(cls) -> StallReport | None:
        """The report `DEEPPLAN_STALL_DUMP_MS` asks for; None when it is unset, empty or not a positive number.

        A bad value is reported and ignored: a diagnostic switch must not keep the models from loading.
        """
        text = os.environ.get(STALL_DUMP_ENV, "").strip()
        if not text:
            return None
        try:
            return cls(float(text))
        except ValueError as exc:
            print(f"deepplan: {STALL_DUMP_ENV}={text!r} ignored: {exc}", file=sys.stderr, flush=True)
            return None

    def run(self, job: Callable[[], T]) -> T:
        """`job()`, watched. Only one job runs at a time (the device thread): faulthandler has one timer."""
        if self.dumps >= MAX_DUMPS:
            return job()
        start = time.perf_counter()
        faulthandler.dump_traceback_later(self.limit_s, repeat=False, file=sys.stderr)
        try:
            return job()
        finally:
            faulthandler.cancel_dump_traceback_later()
            if time.perf_counter() - start >= self.limit_s:  # it fired (give or take the timer's resolution)
                self.dumps += 1
