"""A serving process that dies of a signal says so with Python stacks and writes no core (unless asked)."""

from __future__ import annotations

import fcntl
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from deepplan_backend.runtime.crash_policy import CORE_DUMPS_ENV


def _unlimited_cores() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def _run(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_unlimited_cores,
    )


def test_a_crash_while_holding_the_residency_lock_prints_stacks_and_frees_the_lock(tmp_path):
    lock = tmp_path / "state.lock"
    done = _run(
        f"""
        import ctypes, fcntl
        from deepplan_backend.runtime.crash_policy import prepare_to_die
        prepare_to_die()
        held = open({str(lock)!r}, "a+")
        fcntl.flock(held, fcntl.LOCK_EX)
        ctypes.string_at(0)  # SIGSEGV with the lock held
        """,
        tmp_path,
    )
    assert done.returncode == -11
    assert "Fatal Python error: Segmentation fault" in done.stderr and "<module>" in done.stderr
    assert not list(tmp_path.glob("core*"))  # core_pattern "core" would have put one here
    with open(lock, "a+") as mine:
        start = time.monotonic()
        fcntl.flock(mine, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free at once: the process is gone
        assert time.monotonic() - start < 1


def test_core_dumps_are_off_unless_asked_for(tmp_path):
    code = """
        import resource
        from deepplan_backend.runtime.crash_policy import prepare_to_die
        kept = prepare_to_die()
        print(kept, resource.getrlimit(resource.RLIMIT_CORE)[0])
        """
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    assert _run(code, tmp_path).stdout.split() == ["False", "0"]
    env = {**os.environ, CORE_DUMPS_ENV: "1"}
    assert _run(code, tmp_path, env).stdout.split() == ["True", str(hard)]
