"""`benchmark.fig10_plot`: the table-mode CSV drawn as normalised bars, and clear errors for other files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmark.fig10_plot import TableError, main, plot_fig10, read_table
from benchmark.table import COLUMNS


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def _row(model: str, engine: str, devices: str, cold: float) -> dict[str, object]:
    return {"model": model, "engine": engine, "devices": devices, "cold_ms": cold, "warm_ms": cold / 3,
            "predicted_ms": cold * 1.05, "gpu_name": "cpu"}  # fmt: skip


def test_a_table_becomes_a_png(tmp_path: Path) -> None:
    rows = [_row(m, e, d, c) for m in ("a", "b") for e, d, c in (("demand", "0", 10.0), ("deepplan", "0 1", 6.0))]
    table = _write(tmp_path / "fig10.csv", rows)
    assert main([str(table)]) == 0
    png = tmp_path / "fig10.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = plot_fig10(read_table(table), tmp_path / "other.png", title="t")
    assert other.stat().st_size > 1000


def test_a_model_without_on_demand_or_a_foreign_csv_is_refused(tmp_path: Path, capsys) -> None:
    table = _write(tmp_path / "t.csv", [_row("a", "pipeline", "0", 5.0)])
    with pytest.raises(TableError, match="no On-Demand row"):
        plot_fig10(read_table(table), tmp_path / "x.png")
    foreign = tmp_path / "f.csv"
    foreign.write_text("x,y\n1,2\n")
    assert main([str(foreign)]) == 2
    assert "not a table-mode CSV" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()
    assert main([str(tmp_path / "missing.csv")]) == 2
