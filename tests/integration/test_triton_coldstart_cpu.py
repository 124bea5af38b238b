"""`python3 -m benchmark.triton_coldstart --quick` end to end on the CPU: real tritonserver, gRPC client, CSV/JSON.

One tiny-bert model plus two eviction copies under a budget that holds one of them, and the model-control API
loads of a plain Python model and a fresh deepplan model; every answer must equal the plain model's.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow]

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_quick_run_writes_complete_correct_results(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "benchmark.triton_coldstart",
        "--out",
        str(out),
        "--quick",
        "--models",
        "tiny-bert",
        "--instances",
        "2",
        "--warm",
        "3",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=230)
    log = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log

    from benchmark.triton_coldstart.rows import COLUMNS

    with (out / "triton_coldstart.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = {r["model"]: r for r in reader}
    assert set(rows) == {"tiny-bert", "tiny-bert-evict-x2"}, rows
    bert = rows["tiny-bert"]
    assert all(r["all_correct"] == "True" for r in rows.values()), rows
    assert bert["devices"] == "cpu" and bert["gpu_name"] == "cpu"
    assert bert["process"] == "shared"  # the default: device work in the engine host
    assert int(bert["cold_samples"]) == 2  # every forced cold start was a cold start
    for col in (
        "client_cold_ms",
        "engine_cold_ms",
        "ratio",
        "client_warm_p50_ms",
        "triton_load_ms",
        "deepplan_load_ms",
    ):
        assert float(bert[col]) > 0, col
    assert float(bert["client_cold_ms"]) >= float(bert["backend_cold_ms"]) >= float(bert["engine_cold_ms"])
    assert int(bert["evict_run_cold_starts"]) >= 2 and int(bert["evictions"]) >= 2
    # the backend's trace lines split the cold requests: each phase lies inside the one around it
    t = {p: float(bert[f"trace_{p}_ms"]) for p in ("answer", "exchange", "host", "engine", "validate")}
    assert t["answer"] >= t["exchange"] >= t["host"] >= t["engine"] > 0 and t["host"] >= t["validate"] > 0, t
    assert bert["budget_respected"] == "True"
    # Triton's floor: measured for this request, below the warm latency (it computes nothing), and the overheads add up
    floor, overhead = float(bert["triton_floor_ms"]), float(bert["overhead_ms"])
    assert 0 < floor < float(bert["client_warm_p50_ms"]), bert
    assert overhead == pytest.approx(float(bert["client_cold_ms"]) - float(bert["engine_cold_ms"]), abs=2e-3)
    assert float(bert["own_overhead_ms"]) == pytest.approx(overhead - floor, abs=2e-3)
    assert rows["tiny-bert-evict-x2"]["triton_floor_ms"] == bert["triton_floor_ms"]  # same requests, same floor

    assert (out / "triton_coldstart.png").read_bytes()[:4] == b"\x89PNG"  # the breakdown, drawn from the trace
    doc = json.loads((out / "triton_coldstart.json").read_text())
    assert doc["all_correct"] is True and doc["errors"] == []
    ev = doc["eviction_run"]  # Triton's counters agree with the residency state once the front ends refreshed them
    assert ev["evictions_metric_delta"] == ev["evictions_observed"], ev
    assert ev["cold_starts_metric_delta"] == ev["cold_starts"], ev
    assert doc["per_model"]["tiny-bert"]["loads"]["triton_correct"] is True
    assert len(doc["floor_client_ms"]["tiny-bert"]) == 2  # one per forced cold start (--quick: 2)
    assert doc["served_on"]["tiny-bert"]["devices"] == ["cpu"]
    log_text = (out / "server.log").read_text()
    assert "deepplan: tiny-bert_0_0 ready" in log_text
    # The engine host lingers after the server and says so last: the log waits for it (it was closed under it).
    assert "no model left" in log_text and "exiting" in log_text
    assert "I/O operation on closed file" not in log, log
    assert "successfully loaded 'tiny-bert-python'" in log_text or "tiny-bert-python" in log_text
