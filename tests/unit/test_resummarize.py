"""`loadtest.experiments.resummarize`: an experiment's table and plot recomputed from its per-request logs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from loadtest.experiments.resummarize import main as resummarize
from loadtest.results import RequestRecord, write_log


def _point(folder: Path, slow_first: int) -> None:
    """20 requests at 0.25 s intervals, 10 ms each, except the first `slow_first` (500 ms, cold)."""
    records = [
        RequestRecord(
            send_s=0.25 * i,
            scheduled_s=0.25 * i,
            model=f"m{i % 2}",
            latency_ms=500.0 if i < slow_first else 10.0,
            ok=True,
            cold_start=i < slow_first,
            provision_ms=400.0 if i < slow_first else 0.0,
        )
        for i in range(20)
    ]
    write_log(folder / "requests.csv", records)


def _table(tmp_path: Path) -> Path:
    rows = []
    for engine, slow in (("pipeline", 4), ("deepplan", 2), ("deepplan+pt", 0)):
        folder = tmp_path / "points" / f"{engine}-n2"
        if engine != "deepplan+pt":  # this point's log is missing
            _point(folder, slow)
        rows.append(
            {"engine": engine, "instances": 2, "rate": 4.0, "p99_ms": -1.0, "gpu_name": "cpu", "num_gpus": 0,
             "server_ready_s": 3.5, "results_dir": str(folder), "error": ""}
        )  # fmt: skip
    table = tmp_path / "fig12.json"
    table.write_text(json.dumps({"experiment": "fig12", "args": {"slo_ms": 100.0, "duration_s": 5.0}, "rows": rows}))
    return table


def test_recomputes_rows_and_plot_from_the_logs(tmp_path: Path) -> None:
    table = _table(tmp_path)
    assert resummarize([str(table), "--warmup-s", "1.5", "--out", str(tmp_path / "out")]) == 1  # one log missing
    with (tmp_path / "out" / "fig12.csv").open() as f:
        rows = {r["engine"]: r for r in csv.DictReader(f)}
    pipeline = rows["pipeline"]
    assert float(pipeline["p99_ms"]) == 500.0 and float(pipeline["goodput_pct"]) == 80.0  # 16 of 20 in the SLO
    assert float(pipeline["cold_start_pct"]) == 20.0
    assert float(pipeline["warmup_s"]) == 1.5 and float(pipeline["p99_steady_ms"]) == 10.0  # sent >= 1.5 s: fast
    assert float(pipeline["goodput_steady_pct"]) == 100.0 and float(pipeline["cold_start_steady_pct"]) == 0.0
    assert float(pipeline["server_ready_s"]) == 3.5  # server-side columns kept
    assert float(rows["deepplan"]["goodput_pct"]) == 90.0
    assert float(rows["deepplan+pt"]["p99_ms"]) == -1.0  # no log: the row as it was
    assert (tmp_path / "out" / "fig12.png").read_bytes()[:4] == b"\x89PNG"
    doc = json.loads((tmp_path / "out" / "fig12.json").read_text())
    assert doc["resummarized"]["warmup_s"] == 1.5 and len(doc["rows"]) == 3
    assert json.loads(table.read_text())["rows"][0]["p99_ms"] == -1.0  # --out: the input is left alone


def test_another_slo_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = _table(tmp_path)
    resummarize([str(table), "--warmup-s", "1.5"])  # in place
    resummarize([str(table), "--slo-ms", "5"])  # keeps the table's warm-up
    rows = json.loads(table.read_text())["rows"]
    assert rows[0]["goodput_pct"] == 0.0 and rows[0]["slo_ms"] == 5.0 and rows[0]["warmup_s"] == 1.5
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert resummarize([str(bad)]) == 2
    assert "not an experiment table" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        resummarize([str(table), "--warmup-s", "-1"])
