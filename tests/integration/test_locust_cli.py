"""The Locust files' command line: documented options and env vars, clear errors (no Triton needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a Locust process per test (~2 s each)
COMMON = [
    "--rate",
    "--instances",
    "--model-prefix",
    "--models",
    "--slo-ms",
    "--protocol",
    "--triton-url",
    "--results-dir",
    "--seed",
    "--seq-len",
    "--drain-s",
    "--request-timeout-s",
]


def locust(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "locust", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("locustfile", "specific"),
    [
        (
            "loadtest/azure_trace.py",
            ["--trace-dir", "--trace-day", "--window-start", "--window-minutes", "--time-scale"],
        ),
        ("loadtest/synthetic.py", ["--duration-s"]),
    ],
)
def test_help_documents_every_option_and_its_env_var(locustfile, specific):
    rc, out = locust("-f", locustfile, "--help")
    assert rc == 0, out
    for flag in COMMON + specific:
        assert flag in out, flag
        assert "LOCUST_" + flag.lstrip("-").upper().replace("-", "_") in out.replace("\n", " ").replace(" ", ""), flag


def test_missing_trace_is_a_clear_error(tmp_path):
    # Run from another folder with an absolute locustfile path: the package must still import.
    rc, out = locust(
        "-f",
        str(REPO / "loadtest/azure_trace.py"),
        "--headless",
        "--trace-dir",
        str(tmp_path / "none"),
        "--results-dir",
        str(tmp_path / "r"),
        cwd=tmp_path,
    )
    assert rc == 2, out
    assert "does not exist" in out and "download_azure_trace.sh" in out
    assert not (tmp_path / "r").exists()


def test_env_vars_set_options_and_unreachable_triton_is_a_clear_error(tmp_path):
    env = {
        "LOCUST_TRITON_URL": "127.0.0.1:9",
        "LOCUST_PROTOCOL": "http",
        "LOCUST_DURATION_S": "1",
        "LOCUST_RESULTS_DIR": str(tmp_path / "r"),
    }
    rc, out = locust("-f", "loadtest/synthetic.py", "--headless", env=env)
    assert rc == 2, out
    assert "Triton at 127.0.0.1:9 (http) is not reachable" in out


def test_bad_model_list_file_is_a_clear_error(tmp_path):
    rc, out = locust("-f", "loadtest/synthetic.py", "--headless", "--models", f"@{tmp_path / 'missing.txt'}")
    assert rc == 2, out
    assert "missing.txt not found" in out
