"""The front end's side of an engine host, against fake hosts: retries, refusals, socket folder rules."""

from __future__ import annotations

import os
import select
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from deepplan_backend.hosting import host_client
from deepplan_backend.hosting.host_client import HostDropped, HostedModel, HostError, socket_path
from deepplan_backend.hosting.wire import recv_message, send_message
from deepplan_backend.runtime.residency import STATE_DIR_ENV


class FakeHost:
    """Listens where the real host would; `behaviour(conn, n)` handles the n-th connection."""

    def __init__(self, path: Path, behaviour) -> None:
        self.path = path
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path.unlink(missing_ok=True)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.behaviour = behaviour
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                self.behaviour(conn, self.connections)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.setattr(host_client, "RETRIES", 3)
    return tmp_path / "state"


def _model(tmp_path: Path) -> HostedModel:
    return HostedModel({"model": "tiny-bert"}, tmp_path / "m", "m_0_0", 4, None)


def test_a_host_that_drops_registrations_is_retried_then_reported(state: Path, tmp_path: Path) -> None:
    fake = FakeHost(socket_path(state, 0), lambda conn, n: None)  # accept, then close: a host on its way out
    try:
        with pytest.raises(HostDropped, match="dropped the registration"):
            _model(tmp_path)
        assert fake.connections == 3
    finally:
        fake.close()


def test_a_dropped_registration_succeeds_on_the_next_attempt(state: Path, tmp_path: Path) -> None:
    def behaviour(conn: socket.socket, n: int) -> None:
        recv_message(conn)
        if n >= 2:  # the first connection is dropped
            send_message(conn, {"ok": True, "info": {"pid": 1, "model": "tiny-bert"}})
            conn.recv(1)  # hold the connection until the client closes it

    fake = FakeHost(socket_path(state, 0), behaviour)
    try:
        model = _model(tmp_path)
        assert model.info["pid"] == 1 and fake.connections == 2
        model.close()
    finally:
        fake.close()


def test_a_refusal_is_not_retried(state: Path, tmp_path: Path) -> None:
    def behaviour(conn: socket.socket, n: int) -> None:
        recv_message(conn)
        send_message(conn, {"ok": False, "error": "ConfigError: parameter engine: 'warp'"})

    fake = FakeHost(socket_path(state, 0), behaviour)
    try:
        with pytest.raises(HostError, match="parameter engine") as err:
            _model(tmp_path)
        assert not isinstance(err.value, HostDropped) and fake.connections == 1
    finally:
        fake.close()


def test_socket_paths_are_short_private_and_per_server(tmp_path: Path) -> None:
    a, b = socket_path(tmp_path / "server-a", 0), socket_path(tmp_path / "server-b", 0)
    assert a != b and a.parent == b.parent and len(str(a).encode()) < 108
    assert socket_path(tmp_path / "server-a", 3) != a
    assert a.parent.stat().st_mode & 0o077 == 0 and a.parent.stat().st_uid == os.getuid()


def test_target_gpu_of_a_kind_cpu_front_end() -> None:
    assert host_client._target_of({"target_gpu": "2"}) == 2
    assert host_client._target_of({"devices": "3,0,1"}) == 3
    assert host_client._target_of({"devices": "auto"}) == 0


def test_an_unsendable_request_fails_alone(state: Path, tmp_path: Path) -> None:
    def behaviour(conn: socket.socket, n: int) -> None:
        recv_message(conn)  # registration
        send_message(conn, {"ok": True, "info": {"pid": 1}})
        header, arrays = recv_message(conn)
        assert header["requests"] == [["input_ids"]]  # only the good request reached the host
        send_message(conn, {"ok": True, "answers": [{"cold": True, "provision_ms": 2.0}]}, [arrays[0] * 2.0])
        conn.recv(1)

    fake = FakeHost(socket_path(state, 0), behaviour)
    try:
        model = _model(tmp_path)
        good = np.ones((1, 3), np.float32)
        bad, ok = model.answer([{"input_ids": np.array([["x"]], dtype=object)}, {"input_ids": good}])
        assert bad.invalid and "not supported" in (bad.error or "")
        assert ok.error is None and ok.cold and np.array_equal(ok.output, good * 2)
        model.close()
    finally:
        fake.close()


def test_a_host_without_a_pid_is_not_watched(state: Path, tmp_path: Path) -> None:
    """The watcher waits on the host's pid; a host that gives none is left to the requests' own reconnects."""

    def behaviour(conn: socket.socket, n: int) -> None:
        recv_message(conn)
        send_message(conn, {"ok": True, "info": {"model": "tiny-bert"}})
        conn.recv(1)

    fake = FakeHost(socket_path(state, 0), behaviour)
    try:
        model = _model(tmp_path)
        model._watcher.join(timeout=5)
        assert not model._watcher.is_alive() and fake.connections == 1, "no reconnect loop"
        model.close()
    finally:
        fake.close()


def test_a_stopped_servers_files_go_but_a_live_listener_stays(tmp_path: Path) -> None:
    state = tmp_path / "server"
    dead, live = socket_path(state, 0), socket_path(state, 1)
    lock = dead.with_suffix(".lock")
    lock.touch()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(str(dead))  # closed without unlinking: a killed host's socket
    other = socket_path(tmp_path / "other-server", 0).with_suffix(".lock")
    other.touch()
    listening = FakeHost(live, lambda conn, n: None)  # a host still lingering
    try:
        host_client.remove_server_files(state)
        assert not dead.exists() and not lock.exists()
        assert live.exists(), "a socket someone listens on is its owner's to remove"
        assert other.exists(), "another server's files are not ours"
    finally:
        listening.close()
        other.unlink()


def test_a_request_waiting_for_a_new_host_hurries_its_registration(state: Path, tmp_path: Path) -> None:
    """Registering again after a lost host, with a request waiting, the front end sends ``hurry`` behind the
    registration (the new host takes such models first); a first registration does not."""
    seen: dict[int, list[str]] = {}

    def behaviour(conn: socket.socket, n: int) -> None:
        header, _ = recv_message(conn)
        ops = seen.setdefault(n, [f"{header['op']}:{header['warm_up']}"])
        if select.select([conn], [], [], 1.0)[0]:  # what the front end sends before it has its reply
            ops.append(recv_message(conn)[0]["op"])
        send_message(conn, {"ok": True, "info": {"model": "tiny-bert"}})  # no pid: no watcher thread
        request, arrays = recv_message(conn)
        if n == 1:
            return  # the host dies with the request: the front end registers again, the request waiting
        send_message(conn, {"ok": True, "answers": [{"cold": True, "provision_ms": 1.0}]}, [arrays[0]])
        conn.recv(1)

    fake = FakeHost(socket_path(state, 0), behaviour)
    try:
        model = _model(tmp_path)
        (answer,) = model.answer([{"input_ids": np.ones((1, 3), np.int64)}])
        assert answer.error is None, answer.error
        assert seen == {1: ["register:now"], 2: ["register:later", "hurry"]}
        model.close()
    finally:
        fake.close()
