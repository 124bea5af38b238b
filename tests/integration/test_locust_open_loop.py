"""Real Locust, headless, against the real tritonserver: the replay is open loop and its summary is its log.

The server holds plain Python-backend models with the deepplan I/O (``input_ids`` [+ optional
``attention_mask``] in, ``output`` + ``cold_start`` FP32 [B, 2] out) that sleep 150 ms per request, longer
than the 50 ms mean gap between arrivals: a closed-loop client with one user could not exceed ~6.7 req/s,
the open-loop dispatcher must still send at the scheduled rate, with several requests in flight.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepplan_backend.repository import write_model

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "traces" / "azure2019-sample100" / "invocations.csv"
SLEEP_MS = 150.0
PROVISION_MS = 25.0
INSTANCES_PER_MODEL = 3

pytestmark = [
    pytest.mark.triton,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("pytriton") is None, reason="needs the nvidia-pytriton wheel"),
]


def _import_from_repo_root(name: str):
    # pytest puts tests/integration, not the repo root, on sys.path.
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(name)


CONFIG = """
backend: "python"
max_batch_size: 8
input [
  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] optional: true }
]
output [
  { name: "output" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "cold_start" data_type: TYPE_FP32 dims: [ 2 ] }
]
instance_group [ { kind: KIND_CPU count: %(count)d } ]
parameters { key: "sleep_ms" value: { string_value: "%(sleep_ms)g" } }
parameters { key: "fail" value: { string_value: "%(fail)d" } }
"""

MODEL_PY = f"""
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    # Sleeps sleep_ms per request; the first request an instance serves is its "cold start".
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {{}})
        self.sleep_s = float(params["sleep_ms"]["string_value"]) / 1000.0
        self.fail = params["fail"]["string_value"] == "1"
        self.cold = True

    def execute(self, requests):
        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
            if self.fail:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("test model always fails")))
                continue
            time.sleep(self.sleep_s)
            batch = ids.shape[0]
            cold = np.zeros((batch, 2), dtype=np.float32)
            if self.cold:
                cold[:, 0], cold[:, 1] = 1.0, {PROVISION_MS}
                self.cold = False
            output = np.full((batch, 4), float(ids.shape[1]), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("output", output),
                                                         pb_utils.Tensor("cold_start", cold)]))
        return responses
"""

MODELS = ["lt-0", "lt-1", "lt-2"]


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    triton_server = _import_from_repo_root("tests.triton_server")
    repo = tmp_path_factory.mktemp("repo")
    for name in [*MODELS, "lt-fail"]:
        fail = name == "lt-fail"
        config = CONFIG % {"count": 1 if fail else INSTANCES_PER_MODEL, "sleep_ms": SLEEP_MS, "fail": fail}
        write_model(repo, name, config, MODEL_PY)
    # The test models use the plain Python backend; a placeholder deepplan backend keeps this test
    # independent of the real adapter's state (no model here selects it).
    backend_source = tmp_path_factory.mktemp("deepplan_backend_src")
    (backend_source / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    with triton_server.running_triton(repo, backend_source=backend_source, ready_timeout_s=120.0) as server:
        yield server


def run_locust(locustfile: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 120.0):
    cmd = [sys.executable, "-m", "locust", "-f", locustfile, "--headless", "--only-summary", *args]
    proc = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    return proc, proc.stdout + proc.stderr


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def nearest_rank(values, q):
    ordered = np.sort(np.asarray(values))
    return float(ordered[max(1, int(np.ceil(q / 100 * ordered.size))) - 1])


def max_in_flight(rows) -> int:
    events = []
    for r in rows:
        start = float(r["send_s"])
        events += [(start, 1), (start + float(r["latency_ms"]) / 1000.0, -1)]
    level = peak = 0
    for _, step in sorted(events):
        level += step
        peak = max(peak, level)
    return peak


def assert_summary_is_the_log(summary: dict, rows: list[dict[str, str]], slo_ms: float) -> None:
    """Recompute the headline numbers from the CSV independently of loadtest.results."""
    ok = [r for r in rows if r["ok"] == "1"]
    latencies = [float(r["latency_ms"]) for r in ok]
    reported = [r for r in ok if r["cold_start"] != ""]
    cold = [r for r in reported if r["cold_start"] == "1"]
    assert summary["requests"] == len(rows)
    assert summary["ok"] == len(ok) and summary["errors"] == len(rows) - len(ok)
    assert summary["p50_ms"] == pytest.approx(nearest_rank(latencies, 50), abs=1e-3)
    assert summary["p99_ms"] == pytest.approx(nearest_rank(latencies, 99), abs=1e-3)
    within = sum(1 for x in latencies if x <= slo_ms)
    assert summary["goodput_pct"] == pytest.approx(100.0 * within / len(rows))
    assert summary["cold_starts"] == len(cold)
    assert summary["cold_start_rate"] == pytest.approx(len(cold) / len(reported))
    for model, stats in summary["per_model"].items():
        assert stats["requests"] == sum(1 for r in rows if r["model"] == model)
    # And the offline CLI, reading only the log, gives the same summary.
    log = Path(summary["run"]["options"]["results_dir"]) / "requests.csv"
    cmd = [
        sys.executable,
        "-m",
        "loadtest.results",
        str(log),
        "--slo-ms",
        str(slo_ms),
        "--duration-s",
        str(summary["duration_s"]),
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    offline = json.loads(out.stdout)
    for key in ("requests", "p50_ms", "p99_ms", "goodput_pct", "cold_start_rate", "achieved_rate_rps"):
        assert offline[key] == pytest.approx(summary[key], rel=1e-6), key


def test_synthetic_grpc_is_open_loop(triton, tmp_path):
    rate, duration, slo_ms = 20.0, 12.0, 200.0
    results = tmp_path / "results"
    proc, log = run_locust(
        "loadtest/synthetic.py",
        [
            "--triton-url",
            triton.grpc_url,
            "--protocol",
            "grpc",
            "--models",
            ",".join(MODELS),
            "--rate",
            str(rate),
            "--duration-s",
            str(duration),
            "--slo-ms",
            str(slo_ms),
            "--seq-len",
            "16",
            "--seed",
            "3",
            "--results-dir",
            str(results),
            "--csv",
            str(tmp_path / "locust"),
        ],
    )
    assert proc.returncode == 0, log
    summary = json.loads((results / "summary.json").read_text())
    rows = read_rows(results / "requests.csv")

    # Everything scheduled was sent and answered.
    assert summary["run"]["completed"] and summary["run"]["unanswered"] == 0, summary["run"]
    assert summary["requests"] == summary["scheduled_requests"] == len(rows) > 0.6 * rate * duration
    assert summary["errors"] == 0, log
    # Open loop: the server is slower than the gap, yet the achieved rate is the scheduled one...
    p50 = summary["p50_ms"]
    assert p50 >= SLEEP_MS > 1000.0 / rate
    assert summary["achieved_rate_rps"] == pytest.approx(summary["scheduled_rate_rps"], rel=0.05)
    assert summary["achieved_rate_rps"] > 2.0 * (1000.0 / p50), "no better than one closed-loop user"
    assert summary["dispatch_lag_ms"]["p99"] < 100.0, summary["dispatch_lag_ms"]
    assert max_in_flight(rows) >= 3
    # ...and the cold_start output is read: each instance's first request is cold.
    assert len(MODELS) <= summary["cold_starts"] <= len(MODELS) * INSTANCES_PER_MODEL
    assert summary["provision_ms"]["mean"] == pytest.approx(PROVISION_MS)
    assert_summary_is_the_log(summary, rows, slo_ms)
    # Locust's own stats saw the same requests; plots were written.
    stats = {r["Name"]: r for r in read_rows(tmp_path / "locust_stats.csv")}
    assert int(stats["Aggregated"]["Request Count"]) == len(rows)
    assert (results / "latency_cdf.png").stat().st_size > 0 and (results / "timeline.png").stat().st_size > 0


def test_azure_trace_http_via_env_vars(triton, tmp_path):
    from loadtest.make_trace import generate_counts, write_trace
    from loadtest.trace import TraceMapping, read_invocations, trace_schedule

    if SAMPLE.is_file():
        trace_file = SAMPLE  # read in place: the sample must not be copied into the project
    else:
        trace_file = write_trace(
            tmp_path / "trace" / "invocations.csv", generate_counts(100, 480, seed=1), first_minute=480
        )
    models = [*MODELS, "lt-fail"]
    results = tmp_path / "results"
    env = {
        "LOCUST_TRACE_DIR": str(trace_file.parent),
        "LOCUST_PROTOCOL": "http",
        "LOCUST_TRITON_URL": triton.http_url,
        "LOCUST_MODELS": ",".join(models),
        "LOCUST_RATE": "15",
        "LOCUST_WINDOW_START": "600",
        "LOCUST_WINDOW_MINUTES": "2",
        "LOCUST_TIME_SCALE": "12",
        "LOCUST_SLO_MS": "500",
        "LOCUST_SEED": "5",
        "LOCUST_SEQ_LEN": "8",
        "LOCUST_RESULTS_DIR": str(results),
    }
    proc, log = run_locust("loadtest/azure_trace.py", [], env=env)
    assert proc.returncode == 1, log  # Locust's exit code when some requests failed (lt-fail)
    summary = json.loads((results / "summary.json").read_text())
    rows = read_rows(results / "requests.csv")

    expected = trace_schedule(
        read_invocations(trace_file),
        TraceMapping(len(models), 15.0, window_start=600, window_minutes=2, time_scale=12.0),
        seed=5,
    )
    assert expected.duration_s == 10.0
    assert summary["scheduled_requests"] == len(expected) == len(rows)
    sent = sorted((float(r["scheduled_s"]), r["model"]) for r in rows)
    assert [m for _, m in sent] == [models[i] for i in expected.instances]
    np.testing.assert_allclose([t for t, _ in sent], expected.times_s, atol=1e-5)
    assert summary["achieved_rate_rps"] == pytest.approx(summary["scheduled_rate_rps"], rel=0.05)
    assert summary["errors"] == summary["per_model"]["lt-fail"]["requests"] > 0
    assert all("always fails" in r["error"] for r in rows if r["model"] == "lt-fail")
    assert all(r["cold_start"] == "" for r in rows if r["model"] == "lt-fail")
    assert "minutes 600..601" in summary["run"]["schedule"]
    assert_summary_is_the_log(summary, rows, 500.0)
