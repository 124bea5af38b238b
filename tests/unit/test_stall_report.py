"""The engine host's stall report: dumps stacks for a slow job only, a bounded number of times, bad values ignored."""

from __future__ import annotations

import time

import pytest

from deepplan_backend.hosting import stall_report
from deepplan_backend.hosting.stall_report import STALL_DUMP_ENV, StallReport


def test_a_slow_job_dumps_every_thread_while_it_runs(capfd):
    report = StallReport(limit_ms=20)
    assert report.run(lambda: time.sleep(0.2) or 7) == 7
    err = capfd.readouterr().err
    assert "Thread" in err and "test_stall_report.py" in err  # the sleeping job's own frame
    assert report.dumps == 1


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
    assert "most recent call first" in capfd.readouterr().err
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
