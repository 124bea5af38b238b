"""`python3 -m planner` and `python3 -m benchmark` end to end on the CPU with the tiny models.

The slow part is a process start-up (torch + transformers imports, ~6 s of CPU here), so two commands run as
real subprocesses (the planner writing a plan, and the benchmark refusing a bad model name with exit code 2),
started in the background as the module begins; the other cases run in-process meanwhile through each CLI's
`main(argv)` (what `python3 -m ...` exits with), and the tests that need the subprocesses come last.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.__main__ import main as benchmark_main
from deepplan_backend.runtime.plan_repository import read_plan
from deepplan_backend.runtime.prepared import prepare
from planner.__main__ import default_plan_repo
from planner.__main__ import main as planner_main

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAN_FILE = "tiny-bert.b1.s16.float32.cpu.plan"
REQUIRED_COLUMNS = ("model", "engine", "devices", "cold_ms", "warm_ms", "limit_ms", "predicted_ms", "gpu_name", "date")
TIMEOUT_S = 240

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour of the CLIs"),
    pytest.mark.usefixtures("one_torch_thread"),
]


class Run:
    """A CLI started in the background; `result()` waits for it once."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if k != "PLAN_REPO"}
        full_env.update(env or {})
        self.argv = [sys.executable, "-m", module, *args]
        self._proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._done: tuple[int, str, str] | None = None

    def result(self) -> tuple[int, str, str]:
        if self._done is None:
            try:
                out, err = self._proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                out, err = self._proc.communicate()
                pytest.fail(f"{self.argv} timed out\n{out}\n{err}")
            self._done = (self._proc.returncode, out, err)
        return self._done

    def ok(self) -> str:
        rc, out, err = self.result()
        assert rc == 0, f"{self.argv} exited {rc}\nstdout:\n{out}\nstderr:\n{err}"
        return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cli")
    return {
        "repo": base / "repo",
        "table_repo": base / "table-repo",
        "csv": base / "tmp" / "x.csv",
    }


@pytest.fixture(scope="module", autouse=True)
def runs(dirs: dict[str, Path]):
    one_thread = {"OMP_NUM_THREADS": "1"}
    started = {
        "plan": Run(
            "planner",
            "-m",
            "tiny-bert",
            "-p",
            str(dirs["repo"]),
            "-q",
            "--warmup",
            "1",
            "--repeats",
            "2",
            env=one_thread,
        ),
        "unknown": Run("benchmark", "-m", "no-such-model", "-e", "demand", "-n", "1", env=one_thread),
    }
    yield started
    for run in started.values():
        if run._done is None:
            run._proc.kill()
            run._proc.communicate()


# In-process cases first: they run while the subprocesses start up.


def test_table_mode_writes_csv_and_json(dirs, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = dirs["csv"]
    argv = ["--table", "-m", "tiny-bert", "--configs", "demand", "pipeline", "deepplan", "--make-plans"]
    rc = benchmark_main([*argv, "-p", str(dirs["table_repo"]), "-o", str(csv_path), "-n", "2", "--warmup", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"wrote {csv_path}" in captured.out
    assert csv_path.with_suffix(".png").is_file()  # the bar chart beside it (matplotlib is a dev dependency)
    assert (dirs["table_repo"] / PLAN_FILE).is_file()  # --make-plans planned the missing model
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames is not None
        assert set(REQUIRED_COLUMNS) <= set(reader.fieldnames)
        rows = list(reader)
    records = json.loads(csv_path.with_suffix(".json").read_text())
    assert [r["engine"] for r in rows] == [r["engine"] for r in records] == ["demand", "pipeline", "deepplan"]
    today = dt.date.today().isoformat()
    for row, record in zip(rows, records, strict=True):
        assert set(REQUIRED_COLUMNS) <= set(record)
        assert row["model"] == record["model"] == "tiny-bert"
        assert row["gpu_name"] == record["gpu_name"] == "cpu"
        assert row["date"] == record["date"] == today
        for column in ("cold_ms", "warm_ms", "predicted_ms"):
            assert float(row[column]) > 0 and record[column] > 0, column
        assert float(row["limit_ms"]) >= 0
        assert row["devices"] != ""
        assert float(row["cold_ms"]) == pytest.approx(record["cold_ms"], abs=1e-4)
        assert 0 <= record["max_abs_diff"] < 1e-5  # every engine's output checked against On-Demand's
        assert 0 <= record["plain_max_abs_diff"] < 1e-4  # ... and against the plain transformers model's


def test_table_mode_without_deepplan_needs_no_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.csv"
    argv = ["--table", "-m", "tiny-bert", "--configs", "demand", "pipeline", "-p", str(tmp_path / "empty")]
    rc = benchmark_main([*argv, "-o", str(out), "-n", "1", "--warmup", "0"])
    assert rc == 0, capsys.readouterr().err
    assert out.is_file()


def test_deepplan_without_a_plan_names_the_planner_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty-repo"
    rc = benchmark_main(["-m", "tiny-bert", "-e", "deepplan", "-p", str(empty), "-n", "1", "--warmup", "0"])
    captured = capsys.readouterr()
    assert rc != 0
    assert "model average inference time" not in captured.out
    assert "no plan for tiny-bert" in captured.err
    assert f"python3 -m planner -m tiny-bert -p {empty}" in captured.err


def test_planner_unknown_model_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert planner_main(["-m", "no-such-model", "-p", str(tmp_path / "r"), "-q"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


@pytest.mark.parametrize("cli", ["planner", "benchmark"])
def test_gpu_ids_on_a_cpu_only_machine(cli: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = str(tmp_path / "r")
    if cli == "planner":
        rc = planner_main(["-m", "tiny-bert", "-d", "0", "-p", repo, "-q"])
    else:
        rc = benchmark_main(["-m", "tiny-bert", "-e", "demand", "-d", "0", "-p", repo, "-n", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "[0]" in err


def test_graph_regime_planning_needs_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert planner_main(["-m", "tiny-bert", "--graphs", "-p", str(tmp_path / "r"), "-q"]) == 2
    assert "CUDA-graph execution needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_planner_show_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert planner_main(["--show", str(tmp_path / "nope.plan")]) == 2
    assert "nope.plan" in capsys.readouterr().err


def _exit_code(main, argv: list[str]) -> int:
    """What `python3 -m ...` would exit with (argparse errors raise SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize("cli", ["planner", "benchmark"])
def test_batch_size_zero_is_a_clean_error(cli: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = str(tmp_path / "r")
    if cli == "planner":
        rc = _exit_code(planner_main, ["-m", "tiny-bert", "-b", "0", "-p", repo, "-q", "--warmup", "0"])
    else:
        rc = _exit_code(benchmark_main, ["-m", "tiny-bert", "-e", "demand", "-b", "0", "-p", repo, "-n", "1"])
    assert rc == 2
    assert "batch" in capsys.readouterr().err.lower()


def test_planner_repeats_zero_is_a_clean_error(tmp_path: Path) -> None:
    argv = ["-m", "tiny-bert", "--repeats", "0", "--warmup", "0", "-p", str(tmp_path / "r"), "-q"]
    assert _exit_code(planner_main, argv) == 2


# Cases that need the subprocesses.


def test_unknown_model_is_a_clean_error(runs) -> None:
    rc, _, err = runs["unknown"].result()
    assert rc == 2
    assert "Traceback" not in err
    assert err.startswith("error: ")
    assert "no-such-model" in err and "tiny-bert" in err


def test_planner_writes_the_plan_file(runs, dirs) -> None:
    out = runs["plan"].ok()
    path = dirs["repo"] / PLAN_FILE
    assert path.is_file()
    assert f"plan written: {path}" in out
    plan = read_plan(path)
    assert (plan.key.model, plan.key.gpu_name, plan.key.seq_len, plan.key.batch_size) == ("tiny-bert", "cpu", 16, 1)
    assert plan.fingerprint == prepare("tiny-bert").fingerprint
    held = {(v.engine, v.num_devices) for v in plan.variants}
    assert {("demand", 1), ("pipeline", 1), ("deepplan", 1)} <= held
    assert len(plan.layers) == len(prepare("tiny-bert").table)


def test_planner_show_prints_a_table(runs, dirs, capsys: pytest.CaptureFixture[str]) -> None:
    runs["plan"].ok()
    assert planner_main(["--show", str(dirs["repo"] / PLAN_FILE)]) == 0
    out = capsys.readouterr().out
    assert "plan for tiny-bert" in out
    assert "deepplan x1" in out and "demand x1" in out
    assert "inner.pooler.dense" in out  # one row per layer
    assert "decision" in out


def test_benchmark_deepplan_with_the_plan(runs, dirs, capsys: pytest.CaptureFixture[str]) -> None:
    runs["plan"].ok()
    assert benchmark_main(["-m", "tiny-bert", "-e", "deepplan", "-p", str(dirs["repo"]), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "Benchmarking Inference tiny-bert" in out
    line = next(x for x in out.splitlines() if x.startswith("model average inference time : "))
    value, unit = line.removeprefix("model average inference time : ").split()
    assert unit == "ms" and float(value) > 0
    assert "predicted" in out


def test_plan_repo_environment_variable(
    runs, dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs["plan"].ok()
    monkeypatch.setenv("PLAN_REPO", str(dirs["repo"]))
    assert default_plan_repo() == dirs["repo"]
    # The benchmark finds the planner's file through $PLAN_REPO alone...
    assert benchmark_main(["-m", "tiny-bert", "-e", "deepplan", "-n", "1", "--warmup", "0"]) == 0
    assert "model average inference time" in capsys.readouterr().out
    # ...and the planner writes where $PLAN_REPO points.
    elsewhere = tmp_path / "env-repo"
    monkeypatch.setenv("PLAN_REPO", str(elsewhere))
    assert planner_main(["-m", "tiny-bert", "-q", "--warmup", "0", "--repeats", "1"]) == 0
    assert (elsewhere / PLAN_FILE).is_file()
    monkeypatch.delenv("PLAN_REPO")
    assert default_plan_repo() == Path("plans")


def test_coldstart_limit_refuses_clearly_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: tests/gpu cover the benchmark's path")
    from benchmark.coldstart_limit import main as limit_main

    rc = limit_main(["-m", "tiny-bert", "-p", str(tmp_path / "plans"), "-o", str(tmp_path / "x.csv")])
    assert rc == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
