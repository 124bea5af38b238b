"""The experiment drivers end to end on the CPU: real tritonserver per point, real Locust headless, CSV/JSON/PNG.

The sweep runs tiny-resnet (its 45 KiB copies make a budget that forces evictions easy to state); the
host-death run, tiny-bert. The trace replay's full run (one server per engine) does not fit the time budget on
a 2-core machine: its argument checks and its CSV / timeline / plot writer on a hand-made per-request log are
tested instead.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.triton,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("pytriton") is None, reason="needs the nvidia-pytriton wheel"),
    pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="needs locust"),
]


def run(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.timeout(400)
def test_sweep_writes_rows_cold_starts_and_plot(tmp_path):
    out = tmp_path / "fig12"
    # 60 KiB per device holds one copy of tiny-resnet (45 KiB): every switch of instance evicts the other.
    proc = run(
        "loadtest.experiments.sweep",
        *("--model", "tiny-resnet", "--instances", "2", "3", "--engines", "pipeline", "deepplan"),
        *("--rate", "5", "--duration-s", "4", "--drain-s", "5", "--budget", "60KiB", "--out", str(out)),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "all 3 models" in log  # waited for every model, with progress output
    rows = read_csv(out / "fig12.csv")
    assert [(r["engine"], r["instances"]) for r in rows] == [
        ("pipeline", "2"),
        ("pipeline", "3"),
        ("deepplan", "2"),
        ("deepplan", "3"),
    ]
    for r in rows:
        assert r["error"] == "", r
        assert r["gpu_name"] == "cpu" and r["date"] and r["rate"] == "5.000"
        assert int(r["requests"]) > 5 and r["errors"] == "0", r
        assert float(r["p99_ms"]) > 0 and 0 <= float(r["goodput_pct"]) <= 100
        assert float(r["throughput_rps"]) > 0
        assert float(r["cold_start_pct"]) > 0, r
        # Evictions: more cold starts than instances (each instance's first request is cold anyway).
        assert int(r["cold_starts"]) > int(r["instances"]), r
        point = Path(r["results_dir"])
        summary = json.loads((point / "summary.json").read_text())
        assert summary["p99_ms"] == pytest.approx(float(r["p99_ms"]), abs=1e-3)
        assert (point / "requests.csv").is_file() and (point / "server.log").is_file()
    doc = json.loads((out / "fig12.json").read_text())
    assert len(doc["rows"]) == 4 and doc["experiment"] == "fig12"
    assert (out / "fig12.png").stat().st_size > 10_000


def _import_from_root():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def test_sweep_refuses_unknown_engine(tmp_path, capsys):
    _import_from_root()
    from loadtest.experiments.sweep import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--engines", "turbo", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "pipeline, deepplan, deepplan+pt" in capsys.readouterr().err
    assert parse_args(["--engines", "deepplan-PT", "pipeline", "--out", str(tmp_path)]).engines == [
        "deepplan+pt",
        "pipeline",
    ]


def test_trace_replay_argument_checks(tmp_path, capsys):
    _import_from_root()
    from loadtest.experiments.trace_replay import parse_args

    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as exc:
            parse_args([*argv, "--out", str(tmp_path / "o")])
        assert exc.value.code == 2
        return capsys.readouterr().err

    err = refused("--trace-dir", str(tmp_path / "none"))
    assert "does not exist" in err and "make_trace" in err
    trace = tmp_path / "trace"
    assert run("loadtest.make_trace", "--out", str(trace), "--functions", "20", "--minutes", "30").returncode == 0
    err = refused("--trace-dir", str(trace), "--models", "tiny-resnet", "tiny-gpt2", "--instances", "1")
    assert "--instances (1) must be >=" in err
    assert "not a zoo model" in refused("--trace-dir", str(trace), "--models", "no-such-model", "--instances", "2")
    assert "and --time-scale must be > 0" in refused("--trace-dir", str(trace), "--time-scale", "0")
    args = parse_args(["--trace-dir", str(trace), "--models", "tiny-resnet", "--instances", "2", "--out", "o"])
    assert args.trace_file.name == "invocations_per_function_md.anon.d02.csv" and args.seq_len == 16
    assert not (tmp_path / "o").exists()  # nothing started, nothing written


def test_trace_replay_writer_on_a_hand_made_log(tmp_path):
    _import_from_root()
    from loadtest.experiments.devices import Devices
    from loadtest.experiments.point import PointResult
    from loadtest.experiments.table import row_of
    from loadtest.experiments.trace_replay import timeline_rows, write_results
    from loadtest.results import RequestRecord, summarize

    runs = {
        # engine: (latency, cold) of 8 requests per second over 4 s
        "pipeline": [(300.0 if i % 2 else 20.0, bool(i % 2)) for i in range(32)],
        "deepplan": [(80.0 if i % 4 == 0 else 10.0, i % 4 == 0) for i in range(32)],
    }
    dev = Devices((), "cpu", False)
    rows, timeline = [], []
    for engine, reqs in runs.items():
        records = [
            RequestRecord(i / 8.0, i / 8.0, f"tiny-resnet-{i % 2}", lat, True, "", cold, 5.0 if cold else 0.0)
            for i, (lat, cold) in enumerate(reqs)
        ]
        res = PointResult(summarize(records, 100.0, 4.0, 8.0), tmp_path / engine)
        rows.append(row_of(engine, 2, ["tiny-resnet"], 8.0, 100.0, "", dev, res))
        timeline += timeline_rows(engine, records, 1.0, 100.0, 4.0, 60.0)
    paths = write_results(tmp_path, rows, timeline, {"experiment": "fig14"}, 100.0)
    assert [p.name for p in paths] == ["fig14.csv", "fig14.json", "fig14_timeline.csv", "fig14.png"]
    by_engine = {r["engine"]: r for r in read_csv(tmp_path / "fig14.csv")}
    assert float(by_engine["pipeline"]["cold_start_pct"]) == pytest.approx(50.0)
    assert float(by_engine["pipeline"]["goodput_pct"]) == pytest.approx(50.0)
    assert float(by_engine["deepplan"]["cold_start_pct"]) == pytest.approx(25.0)
    assert float(by_engine["deepplan"]["goodput_pct"]) == pytest.approx(100.0)
    assert float(by_engine["deepplan"]["p99_ms"]) == pytest.approx(80.0)
    tl = read_csv(tmp_path / "fig14_timeline.csv")
    assert len(tl) == 8  # 4 windows of 1 s per engine
    assert [float(r["trace_minute"]) for r in tl[:4]] == [0.0, 1.0, 2.0, 3.0]  # x60: 1 s = 1 trace minute
    assert all(float(r["cold_start_pct"]) == pytest.approx(50.0) for r in tl if r["engine"] == "pipeline")
    assert (tmp_path / "fig14.png").stat().st_size > 10_000


@pytest.mark.timeout(300)
def test_host_death_under_load_is_survived_and_measured(tmp_path):
    """An engine host killed by SIGSEGV under load: its models answer again, the outage is measured, and the log
    holds the dead host's stacks and its replacement's start."""
    out = tmp_path / "host_death"
    proc = run(
        "loadtest.experiments.host_death",
        *("--model", "tiny-bert", "--instances", "3", "--engines", "deepplan", "--rate", "20"),
        *("--duration-s", "8", "--kill-at-s", "4", "--drain-s", "5", "--out", str(out)),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    (row,) = read_csv(out / "host_death.csv")
    assert row["killed"] == "True" and row["models_recovered"] == row["models_asked_after_kill"] == "3", row
    assert 0 < float(row["outage_s"]) < 60 and 0 < float(row["max_gap_s"]) < 60, row
    assert int(row["requests_after_kill"]) > 10, row
    doc = json.loads((out / "host_death.json").read_text())
    assert doc["fatal_stack_logged"] and doc["host_lost_logged"] and doc["killed_pid"], doc
    assert doc["recovery"]["models_set_up_again"] == 3 and doc["recovery"]["setup_ms_max"] > 0, doc
    assert doc["standby_woken"], "the lost host's standby replaced it"
    assert 0 < doc["kill_s"] < 8
    assert (out / "host_death.png").is_file() and (out / "run" / "requests.csv").is_file()
    assert "I/O operation on closed file" not in log  # the log stays open for the lingering replacement host
    assert "no model left" in (out / "run" / "server.log").read_text()  # ... whose last line is kept
