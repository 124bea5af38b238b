"""An engine host's GIL switch interval, set from `DEEPPLAN_GIL_SWITCH_MS` for experiments; bad values are refused."""

from __future__ import annotations

import sys

import pytest

from deepplan_backend.hosting import engine_host


@pytest.fixture
def restore_interval():
    before = sys.getswitchinterval()
    yield before
    sys.setswitchinterval(before)


def test_unset_leaves_pythons_interval(monkeypatch, restore_interval) -> None:
    monkeypatch.delenv(engine_host.GIL_SWITCH_ENV, raising=False)
    assert engine_host.apply_gil_switch_interval() is None
    assert sys.getswitchinterval() == restore_interval


def test_milliseconds_set_the_interval(monkeypatch, restore_interval, capsys) -> None:
    monkeypatch.setenv(engine_host.GIL_SWITCH_ENV, "0.5")
    assert engine_host.apply_gil_switch_interval() == 0.5
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    assert "GIL switch interval 0.5 ms" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["fast", "0", "-1", "nan", "5000"])
def test_bad_values_are_refused_with_a_message(monkeypatch, restore_interval, capsys, text) -> None:
    monkeypatch.setenv(engine_host.GIL_SWITCH_ENV, text)
    assert engine_host.apply_gil_switch_interval() is None
    assert sys.getswitchinterval() == restore_interval
    assert "ignored" in capsys.readouterr().out
