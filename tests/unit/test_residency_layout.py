"""The residency layout benchmark: both layouts timed and written, the module's layout restored, and the held-lock
experiment shows what it is for (the baseline's hosts wait for the held lock, per-device hosts do not)."""

from __future__ import annotations

import csv
import sys

import pytest

from benchmark import residency_layout
from deepplan_backend.runtime import residency


def test_both_layouts_are_timed_and_a_held_lock_stops_only_the_one_file_layout(tmp_path, monkeypatch) -> None:
    out = tmp_path / "layout.csv"
    argv = ["residency_layout", "--hosts", "2", "--models", "5", "--rounds", "5", "--hold-s", "0.5", "-o", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    stem = residency.device_file_stem
    residency_layout.main()
    assert residency.device_file_stem is stem
    rows = list(csv.DictReader(out.open()))
    assert [(r["experiment"], r["layout"]) for r in rows] == [
        ("cold starts", "one file"),
        ("cold starts", "per device"),
        ("held lock", "one file"),
        ("held lock", "per device"),
    ]
    assert [int(r["cold_starts"]) for r in rows] == [10, 10, 5, 5]  # held lock: the first device's host sits out
    held = {r["layout"]: float(r["max_ms"]) for r in rows if r["experiment"] == "held lock"}
    assert held["one file"] >= 400.0 > held["per device"], held
    assert out.with_suffix(".json").is_file()


def test_bad_arguments_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["residency_layout", "--hosts", "1"])
    with pytest.raises(SystemExit):
        residency_layout.main()
