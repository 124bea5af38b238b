"""The engine host without Triton: models of one target GPU share one host process, answers are right, a bad
config is refused with its reason, a killed host is replaced (by its standby), and the host exits once its last
model is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deepplan_backend.hosting import engine_host, standby
from deepplan_backend.hosting.host_client import HostedModel, HostError, listener_pid
from deepplan_backend.runtime.residency import STATE_DIR_ENV
from tests.plain_outputs import plain_output


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "residency"))
    monkeypatch.setenv("DEEPPLAN_ALLOWED_ROOTS", f"{tmp_path / 'plans'}:{tmp_path / 'residency'}")
    for name in ("a", "b", "bad"):
        (tmp_path / "repo" / name / "1").mkdir(parents=True)
    return tmp_path


def _params(root: Path, **extra: str) -> dict[str, str]:
    return {
        "model": "tiny-bert",
        "engine": "pipeline",
        "plan_repository": str(root / "plans"),
        "budget": "64MiB",
        **extra,
    }


def test_models_share_a_host_and_survive_its_death(repo: Path) -> None:
    x = np.random.default_rng(0).integers(0, 1000, (2, 12), dtype=np.int64)
    want = plain_output("tiny-bert", input_ids=x)
    a = HostedModel(_params(repo), repo / "repo" / "a", "a_0_0", 4, None)
    b = HostedModel(_params(repo), repo / "repo" / "b", "b_0_0", 4, None)
    try:
        assert a.info["pid"] == b.info["pid"] != os.getpid()
        assert a.info["model"] == "tiny-bert" and a.info["engine"] == "pipeline"
        (first,) = a.answer([{"input_ids": x}])
        np.testing.assert_allclose(first.output, want, rtol=1e-4, atol=1e-5)
        assert first.cold and first.cold_start_rows().shape == (2, 2)
        bad, good = b.answer([{"input_ids": x[:, :0]}, {"input_ids": x}])
        assert bad.invalid and "empty sequence" in (bad.error or "")
        np.testing.assert_allclose(good.output, want, rtol=1e-4, atol=1e-5)
        assert a.status().resident_bytes > 0
        assert "queued" not in a.info["setup_ms"], "a load's registration does not queue behind the others"

        old = a.info["pid"]
        spare = _listener(standby.control_path(a.path))  # the host keeps a standby, imported, with no GPU work
        assert spare not in (None, old)
        os.kill(old, signal.SIGKILL)
        # A new host registers the model again (its deferred warm-up may have it on the device just now: warm or cold).
        (again,) = a.answer([{"input_ids": x}])
        assert again.error is None, again.error
        np.testing.assert_allclose(again.output, want, rtol=1e-4, atol=1e-5)
        (b_again,) = b.answer([{"input_ids": x}])  # after b's own reconnect (its watcher may still be at it)
        assert b_again.error is None, b_again.error
        assert a.info["pid"] == b.info["pid"] == spare, "the standby replaced the lost host"
        # Registered again one at a time: each says how long it waited for its turn.
        assert all(m.info["setup_ms"]["queued"] >= 0 for m in (a, b)), (a.info["setup_ms"], b.info["setup_ms"])
        assert _listener(standby.control_path(a.path)) not in (None, spare), "the new host keeps a standby too"
    finally:
        a.close()
        b.close()
    host = a.info["pid"]
    spare = _listener(standby.control_path(a.path))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (_running(host) or (spare is not None and _running(spare))):
        time.sleep(0.1)
    assert not _running(host), "the host exits once no model is left"
    assert spare is not None and not _running(spare), "... and stops its standby"
    assert not standby.control_path(a.path).exists()


def test_without_standby_a_new_process_replaces_the_host(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(standby.STANDBY_ENV, "0")
    monkeypatch.setenv(engine_host.RECOVERY_REGISTRATION_ENV, "parallel")  # the comparison's baseline, no queue
    a = HostedModel(_params(repo), repo / "repo" / "a", "a_0_0", 4, None)
    try:
        old = a.info["pid"]
        time.sleep(1.0)  # a standby would be listening by now
        assert _listener(standby.control_path(a.path), wait_s=0) is None
        os.kill(old, signal.SIGKILL)
        (again,) = a.answer([{"input_ids": np.arange(100, 112)[None]}])
        # Not necessarily a cold start: the new host's deferred warm-up may have the model on the device just now.
        assert again.error is None and a.info["pid"] != old, again.error
        assert "queued" not in a.info["setup_ms"]
    finally:
        a.close()


def test_an_orphaned_standby_exits_and_a_woken_one_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`wait_to_be_woken` in this process: False once its host is gone and nobody woke it; True when woken."""
    monkeypatch.setattr(standby, "ORPHAN_WAIT_S", 0.3)
    host_socket = tmp_path / "h.sock"
    host = subprocess.Popen(["sleep", "0.2"])
    start = time.monotonic()
    assert standby.wait_to_be_woken(host_socket, host.pid) is False
    assert time.monotonic() - start < 10 and not standby.control_path(host_socket).exists()
    host.wait()

    host = subprocess.Popen(["sleep", "30"])
    woke: list[int | None] = []

    def wake_when_listening() -> None:
        while not standby.control_path(host_socket).exists():
            time.sleep(0.01)
        woke.append(standby.wake(host_socket))

    waker = threading.Thread(target=wake_when_listening)
    waker.start()
    try:
        assert standby.wait_to_be_woken(host_socket, host.pid) is True
        waker.join(timeout=10)
        assert woke == [os.getpid()] and not standby.control_path(host_socket).exists()
        assert standby.wake(host_socket) is None, "nothing to wake any more"
    finally:
        host.kill()
        host.wait()


def test_bad_config_is_refused_with_the_reason(repo: Path) -> None:
    with pytest.raises(HostError, match="parameter engine"):
        HostedModel(_params(repo, engine="warp"), repo / "repo" / "bad", "bad_0_0", 4, None)


def _listener(path: Path, wait_s: float = 20.0) -> int | None:
    """The pid listening on Unix socket `path` (waiting up to `wait_s` for one), else None."""
    deadline = time.monotonic() + wait_s
    while (pid := listener_pid(path)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
