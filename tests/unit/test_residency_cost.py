"""The residency cost benchmark: it times both codecs, writes its table, and leaves the residency's codec as it was."""

from __future__ import annotations

import csv
import sys

import pytest

from benchmark import residency_cost
from deepplan_backend.runtime import residency


def test_both_codecs_are_timed_and_written(tmp_path, monkeypatch) -> None:
    out = tmp_path / "cost.csv"
    monkeypatch.setattr(sys, "argv", ["residency_cost", "--models", "5", "6", "--rounds", "3", "-o", str(out)])
    encode, decode = residency._encode, residency._decode
    residency_cost.main()
    assert (residency._encode, residency._decode) == (encode, decode)
    rows = list(csv.DictReader(out.open()))
    assert [(r["models"], r["codec"]) for r in rows] == [
        ("5", "json"),
        ("5", "marshal"),
        ("6", "json"),
        ("6", "marshal"),
    ]
    for r in rows:
        assert float(r["cold_start_ms"]) == pytest.approx(float(r["acquire_ms"]) + float(r["release_ms"]), abs=2e-4)
        assert float(r["acquire_ms"]) > 0 and float(r["vs_json"]) > 0
    assert out.with_suffix(".json").is_file()


def test_the_json_baseline_reads_what_it_writes_and_refuses_garbage() -> None:
    state = {"budgets": {"dev": 400}, "models": {"m0": {"pid": 1, "bytes": 100}}, "waiters": {}}
    assert residency_cost._json_decode(residency_cost._json_encode(state)) == state
    assert residency_cost._json_decode(b"[1]") == {} and residency_cost._json_decode(b"{") == {}


def test_too_few_models_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["residency_cost", "--models", "4"])
    with pytest.raises(SystemExit):
        residency_cost.main()
