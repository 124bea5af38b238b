"""Catch a slow device job in the act: every thread's Python stack, printed while the job is still running.

``DEEPPLAN_STALL_DUMP_MS=80`` in the server's environment makes each engine host print the stacks of all its
threads when one device job (a request's budget and forward, an eviction) has run longer than 80 ms, at most
`MAX_DUMPS` times per host. Why: under load, an engine host has been seen to stall for 0.3-0.5 s once, early in a
run, holding up every model of its GPU (Fig. 12 on 4 x H100, 40 BERT-Bases: warm requests of 130-365 ms within
the first second, none later), and the request traces only say that the time went somewhere on the device
thread.

The stacks come from a watchdog thread of this module that reads them with the GIL held
(`sys._current_frames`), not from `faulthandler.dump_traceback_later`: faulthandler walks the other threads'
frames without the GIL, and an engine host starts and ends a thread per connection, so a thread ending during a
dump crashed the host with SIGSEGV (CPython issue 116008; 8 engine hosts died silently in session 11's Fig. 12
run on 4 x H200, and one death held every model up for 12 s). The price: a thread that keeps the GIL for the
whole stall delays its dump until it lets go.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

STALL_DUMP_ENV = "DEEPPLAN_STALL_DUMP_MS"
MAX_DUMPS = 20
"""Dumps per process: a host that is slow all the time should not flood the server's log."""
T = TypeVar("T")


class StallReport:
    """Runs device jobs under a watchdog that prints every thread's stack when one outlives `limit_ms`.

    Jobs run one at a time (the engine host's device thread); the watchdog thread starts with the first job.
    """

    def __init__(self, limit_ms: float) -> None:
        if limit_ms <= 0:
            raise ValueError(f"{STALL_DUMP_ENV} must be a positive number of milliseconds, got {limit_ms:g}")
        self.limit_s = limit_ms / 1e3
        self.dumps = 0
        self._cond = threading.Condition()
        self._job = 0  # number of the job running now; 0 while none runs
        self._started = 0.0
        self._jobs = 0
        self._watchdog: threading.Thread | None = None

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
        """`job()`, watched."""
        if self.dumps >= MAX_DUMPS:
            return job()
        with self._cond:
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="deepplan-stall-watchdog", daemon=True)
                self._watchdog.start()
            self._jobs += 1
            self._job, self._started = self._jobs, time.perf_counter()
            self._cond.notify()
        try:
            return job()
        finally:
            with self._cond:
                self._job = 0
                self._cond.notify()

    def _watch(self) -> None:
        while self.dumps < MAX_DUMPS:
            with self._cond:
                self._cond.wait_for(lambda: self._job != 0)
                job, deadline = self._job, self._started + self.limit_s
                # Wait out this job: its end (or a later job) notifies; a spurious wake-up re-checks the clock.
                while self._job == job and time.perf_counter() < deadline:
                    self._cond.wait(deadline - time.perf_counter())
                if self._job != job:
                    continue
                running_ms = (time.perf_counter() - self._started) * 1e3
                self.dumps += 1
            _write(_stacks(f"device job running for {running_ms:.0f} ms (dump {self.dumps} of at most {MAX_DUMPS})"))
            with self._cond:  # one dump per job
                while self._job == job:
                    self._cond.wait()


def _stacks(title: str) -> str:
    """Every thread's Python stack, most recent call last, under one header naming this process."""
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    parts = [f"deepplan stall report (pid {os.getpid()}): {title}\n"]
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        parts.append(f"Thread {names.get(ident, '?')} ({ident:#x}):\n")
        parts.extend(traceback.format_stack(frame))
    return "".join(parts)


def _write(text: str) -> None:
    """One write per dump, so that dumps of several hosts sharing the server's stderr do not interleave line by line."""
    data = text.encode(errors="replace")
    try:
        while data:
            data = data[os.write(sys.stderr.fileno(), data) :]
    except (OSError, ValueError):  # stderr closed or not a file: the report is best effort
        pass
