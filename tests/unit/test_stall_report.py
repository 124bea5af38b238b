"""The engine host's stall report: dumps stacks for a slow job only, a bounded number of times, bad values ignored."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from deepplan_backend.hosting import stall_report
from deepplan_backend.hosting.stall_report import STALL_DUMP_ENV, StallReport


def test_a_slow_job_dumps_every_thread_while_it_runs(capfd):
    report = StallReport(limit_ms=20)
    assert report.run(lambda: time.sleep(0.2) or 7) == 7
    err = capfd.readouterr().err
    assert "Thread" in err and "test_stall_report.py" in err  # the sleeping job's own frame
    assert f"deepplan stall report (pid {os.getpid()})" in err
    assert report.dumps == 1


def test_threads_ending_during_dumps_do_not_crash_the_process():
    """An engine host starts and ends a thread per connection. faulthandler's watchdog dumped them without the GIL
    and crashed hosts with SIGSEGV (session 11, Fig. 12 on 4 x H200); this churn crashed that version in 0.1 s."""
    script = textwrap.dedent(
        """
        import sys, threading, time
        from deepplan_backend.hosting import stall_report
        stall_report.MAX_DUMPS = 10**6
        stop = threading.Event()
        def churn():
            while not stop.is_set():
                threads = [threading.Thread(target=sum, args=(range(100),)) for _ in range(20)]
                for t in threads: t.start()
                for t in threads: t.join()
        churners = [threading.Thread(target=churn) for _ in range(4)]
        for t in churners: t.start()
        report = stall_report.StallReport(limit_ms=1)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            report.run(lambda: time.sleep(0.003))
        stop.set()
        for t in churners: t.join()
        print("dumps", report.dumps)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 10  # the watchdog did dump while threads came and went


def test_a_fast_job_dumps_nothing(capfd):
    report = StallReport(limit_ms=500)
    assert report.run(lambda: "ok") == "ok"
    time.sleep(0.6)  # past the limit: a timer left armed would fire now
    assert capfd.readouterr().err == ""
    assert report.dumps == 0


def test_a_failing_job_disarms_the_timer(capfd):
    report = StallReport(limit_ms=300)
    with pytest.raises(KeyError):
        report.run(lambda: {}["missing"])
    time.sleep(0.4)
    assert capfd.readouterr().err == ""


def test_dumps_stop_at_the_limit(monkeypatch, capfd):
    monkeypatch.setattr(stall_report, "MAX_DUMPS", 2)
    report = StallReport(limit_ms=10)
    for _ in range(2):
        report.run(lambda: time.sleep(0.05))
    assert report.dumps == 2
    assert capfd.readouterr().err.count("deepplan stall report") == 2
    report.run(lambda: time.sleep(0.05))
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(("value", "wanted"), [("", None), ("80", 0.08), (" 5.5 ", 0.0055)])
def test_the_environment_sets_the_limit(monkeypatch, value, wanted):
    monkeypatch.setenv(STALL_DUMP_ENV, value)
    report = StallReport.from_environment()
    assert (report.limit_s if report else None) == (pytest.approx(wanted) if wanted else None)


@pytest.mark.parametrize("value", ["fast", "0", "-3"])
def test_a_bad_value_is_reported_and_ignored(monkeypatch, capfd, value):
    monkeypatch.setenv(STALL_DUMP_ENV, value)
    assert StallReport.from_environment() is None
    assert STALL_DUMP_ENV in capfd.readouterr().err
