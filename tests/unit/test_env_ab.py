"""`benchmark.env_ab`: balanced runs of one command under two values of a variable, compared per row.

The command is a real subprocess that writes a CSV whose figures depend on the variable and on how many runs came
before it (a drift, as device machines showed), so the test can check that the order cancels out.
"""

from __future__ import annotations

import json
import sys

import pytest

from benchmark import env_ab

# Writes model,ms rows: a's ms is 10 + 1 per unit of X_AB, b's 20 + 2 per unit; every run adds a drift of 0.5 ms.
WRITER = (
    "import os, sys, pathlib\n"
    "out = pathlib.Path(sys.argv[1]); v = float(os.environ['X_AB'])\n"
    "runs = pathlib.Path(sys.argv[2]); n = len(runs.read_text()) if runs.exists() else 0\n"
    "runs.write_text('x' * (n + 1))\n"
    "drift = 0.5 * n\n"
    "(out / 'r.csv').write_text(f'model,ms,note\\na,{10 + v + drift},x\\nb,{20 + 2 * v + drift},y\\n')\n"
)


def test_balanced_order() -> None:
    assert env_ab.run_order(("0", "1"), 2) == ["0", "1", "1", "0"]
    assert env_ab.run_order(("off", "on"), 3) == ["off", "on", "on", "off", "off", "on"]


def test_the_change_is_measured_and_the_drift_cancels(tmp_path) -> None:
    counter = tmp_path / "count"
    code = env_ab.main([
        "--env", "X_AB", "--values", "0", "1", "--rounds", "2", "--csv", "r.csv", "--metrics", "ms", "note",
        "--out", str(tmp_path / "ab"), "--", sys.executable, "-c", WRITER, "{out}", str(counter),
    ])  # fmt: skip
    assert code == 0
    doc = json.loads((tmp_path / "ab" / "env_ab.json").read_text())
    assert [r["value"] for r in doc["runs"]] == ["0", "1", "1", "0"]
    by_key = {r["key"]: r for r in doc["records"]}
    assert set(by_key) == {"a", "b"}  # "note" is not a number: no record for it
    assert by_key["a"]["difference"] == pytest.approx(1.0)  # the drift (0.5 per run) does not leak in
    assert by_key["b"]["difference"] == pytest.approx(2.0)
    assert by_key["a"]["order_effect"] == pytest.approx(0.5)  # running second cost the drift
    assert by_key["b"]["ratio"] == pytest.approx(by_key["b"]["change_mean"] / by_key["b"]["baseline_mean"])
    assert (tmp_path / "ab" / "env_ab.csv").read_text().startswith(",".join(env_ab.COLUMNS))


def test_a_failing_run_stops_with_its_log(tmp_path, capsys) -> None:
    code = env_ab.main([
        "--env", "X_AB", "--values", "0", "1", "--csv", "r.csv", "--metrics", "ms", "--out", str(tmp_path),
        "--", sys.executable, "-c", "import sys; print('broken'); sys.exit(3)", "{out}",
    ])  # fmt: skip
    assert code == 1
    assert "exited with 3" in capsys.readouterr().err
    assert "broken" in (tmp_path / "run1-0" / "run.log").read_text()


def test_a_command_without_its_folder_is_refused(tmp_path) -> None:
    with pytest.raises(SystemExit):
        env_ab.main(["--env", "X", "--values", "0", "1", "--csv", "r.csv", "--metrics", "ms", "--out",
                     str(tmp_path), "--", "true"])  # fmt: skip
