"""`benchmark.plot_files.draw_beside`: a run's picture is optional, and never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from benchmark.plot_files import draw_beside


def _draw(paths: Sequence[Path], out: Path, title: str) -> Path:
    out.write_bytes(b"png")
    return out


def _refuse(paths: Sequence[Path], out: Path, title: str) -> Path:
    raise ValueError("nothing to draw")


def test_picture_beside_the_csv_or_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    table = tmp_path / "run.csv"
    assert draw_beside(table, _draw, ValueError, "benchmark.x", said.append) == tmp_path / "run.png"
    assert said == [f"wrote {tmp_path / 'run.png'}"]
    assert draw_beside(table, _refuse, ValueError, "benchmark.x", said.append) is None
    assert said[-1] == "no plot: nothing to draw"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an install without matplotlib
    assert draw_beside(table, _draw, ValueError, "benchmark.x", said.append) is None
    assert said[-1] == f"matplotlib not installed: no plot (later: python3 -m benchmark.x {table})"
