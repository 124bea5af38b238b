"""A model's side of the engine host: find or start the host of its target GPU, register, forward requests.

Used by the Triton front end (`deepplan_backend/model.py`) when ``process`` is ``shared`` (the default).
Imports neither PyTorch nor CUDA: a front end is a small process.

Hosts are per server and per target GPU: the socket lives in a private folder (``$TMPDIR/deepplan-<uid>``,
mode 0700) under a name derived from the server's residency state folder and the GPU index. The first front
end to need a host starts it, under a lock file, so concurrent model loads start exactly one. If the host dies,
each of its front ends notices at once (a thread waits on the host's pidfd) and reconnects, starting a new host
(or waking its standby, see `standby`), which registers the model again: a model registers again
when its host dies, not in its next request, so a model that is asked rarely meets a plain cold start, not the
host's start-up. A request that finds no host reconnects itself, retried a few times; requests that still fail
get an UNAVAILABLE answer with the reason, and the server stays up.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from deepplan_backend.runtime.answer import Answer, ModelStatus, setup_summary
from deepplan_backend.runtime.path_policy import ensure_private_folder
from deepplan_backend.runtime.residency import STATE_DIR_ENV, default_state_dir, process_alive

from . import standby
from .wire import DTYPES, WireError, recv_message, send_message

PYTHON_ENV = "DEEPPLAN_PYTHON"
"""Interpreter for engine hosts (the Triton stub's own `sys.executable` is the stub binary, not Python)."""
START_TIMEOUT_S = 120.0
RETRIES = 4
T = TypeVar("T")
STATUS_TIMEOUT_S = 5.0
WATCH_RETRY_S = 2.0
"""After a failed reconnect, how long the watcher waits before trying again."""
RECOVERY_WARM_UP_ENV = "DEEPPLAN_RECOVERY_WARM_UP"
"""``now``: a model registered again after its host died warms up inside its registration, as at load (the
default, ``later``, leaves it to the new host's idle time; ``now`` is there for comparison)."""


class HostError(RuntimeError):
    """The engine host could not be started or refused the model (the message says why)."""


class HostDropped(HostError):
    """The connection broke during registration (e.g. the host was exiting as the model arrived): try again."""


def socket_dir() -> Path:
    """The private folder of this user's engine-host sockets (created 0700; refused if someone else owns it)."""
    folder = Path(tempfile.gettempdir()) / f"deepplan-{os.getuid()}"
    try:
        ensure_private_folder(folder, 0o077)
    except PermissionError as exc:
        raise HostError(str(exc)) from None
    return folder


def server_digest(state_dir: Path) -> str:
    """What every host file of the server whose residency state is `state_dir` is named after (``<digest>-...``).

    A digest keeps the paths short (Unix socket paths are limited to 107 bytes) and per server.
    """
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]


def socket_path(state_dir: Path, target: int) -> Path:
    """The socket of the host serving GPU `target` for the server whose residency state is `state_dir`."""
    return socket_dir() / f"{server_digest(state_dir)}-{target}.sock"


def remove_server_files(state_dir: Path) -> None:
    """After a server stopped: its hosts' spawn locks, and their sockets that nobody listens on any more.

    A lock file per GPU is made by the first front end that starts a host and stays while the server runs (a
    front end may start a host at any time); a host killed without a replacement leaves its socket. A host still
    lingering keeps its socket, a waiting standby its control socket: each removes its own on exit.
    """
    remove_unused_files(socket_dir().glob(f"{server_digest(state_dir)}-*"))


def remove_unused_files(entries: Iterable[Path]) -> None:
    """Of these host files: every spawn lock, and every socket nobody listens on (`remove_server_files`'s rule)."""
    for entry in entries:
        if entry.suffix == ".lock" or listener_pid(entry) is None:
            entry.unlink(missing_ok=True)


def python_executable() -> str:
    """``$DEEPPLAN_PYTHON``, else this interpreter when it is a Python, else ``python3`` on the PATH."""
    explicit = os.environ.get(PYTHON_ENV)
    if explicit:
        return explicit
    if sys.executable and Path(sys.executable).name.startswith("python"):
        return sys.executable
    found = shutil.which("python3")
    if found is None:
        raise HostError(f"no Python interpreter to start the engine host; set {PYTHON_ENV}")
    return found


def listener_pid(path: Path) -> int | None:
    """The pid of the process listening on Unix socket `path` (the kernel tells a client: ``SO_PEERCRED``), or None.

    Tells a host from its standby, which has the same ``--socket`` on its command line.
    """
    sock = _connect(path)
    if sock is None:
        return None
    with sock:
        cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", cred)
    return pid or None


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


class HostedModel:
    """One Triton model instance served by its target GPU's engine host.

    Mirrors the parts of `ServedModel` the front end uses: `info` (what `ServedModel.describe` says),
    `answer`, `status`, `close`.
    """

    def __init__(
        self,
        params: Mapping[str, str],
        model_dir: Path,
        key: str,
        max_batch_size: int,
        instance_device: int | None,
    ) -> None:
        self._register_header = {
            "op": "register",
            "params": dict(params),
            "model_dir": str(model_dir),
            "key": key,
            "max_batch_size": max_batch_size,
            "instance_device": instance_device,
        }
        self.state_dir = default_state_dir()
        self.target = instance_device if instance_device is not None else _target_of(params)
        self.path = socket_path(self.state_dir, self.target)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._spawned: subprocess.Popen[bytes] | None = None
        self._woken: int | None = None  # the pid of a standby this model woke to replace its host
        self._lost_host = False  # a connection of this model broke (the host died, or its model was unloaded)
        self._hurry_lock = threading.Lock()
        self._registering: socket.socket | None = None  # a registration with a new host, awaiting its reply
        self._hurried = False  # that registration was told a request waits
        self._requests_waiting = 0
        self._status = ModelStatus()
        self._evictions_before = 0  # evictions counted by hosts this model lived in before the current one
        self._host_evictions = 0
        self.info: dict[str, Any] = {}
        self._closed = threading.Event()
        self._watch_stop_r, self._watch_stop_w = os.pipe()  # close() writes here to end the watcher's wait
        _retrying(self._open, HostDropped, self._drop)
        self._watcher = threading.Thread(target=self._watch_host, name="deepplan-host-watch", daemon=True)
        self._watcher.start()

    # ---- connection ---------------------------------------------------------------------------------------------

    def _open(self) -> None:
        """Connect (starting the host if there is none) and register; HostError with the host's reason."""
        sock = self._connect_or_start()
        # After a host's death, the new host warms this model up once nothing else needs the GPU: requests wait
        # for the registration, not for every model's warm-up (see `engine_host._Host._warm_up_later`).
        later = self._lost_host and os.environ.get(RECOVERY_WARM_UP_ENV, "later").strip() != "now"
        header = {**self._register_header, "warm_up": "later" if later else "now"}
        try:
            send_message(sock, header)
            if later:  # the new host registers its lost models one at a time: one with a request waiting goes first
                with self._hurry_lock:
                    self._registering, self._hurried = sock, False
                    self._hurry_locked()
            reply, _ = recv_message(sock)
        except (OSError, WireError) as exc:
            sock.close()
            raise HostDropped(f"engine host {self.path} dropped the registration: {exc}") from None
        finally:
            with self._hurry_lock:
                self._registering = None
        if not reply.get("ok"):
            sock.close()
            raise HostError(str(reply.get("error", "registration refused")))
        self.info = dict(reply.get("info") or {})
        if self._lost_host:  # the load's line said how the first set-up went; this is the recovery's
            print(
                f"deepplan: {self._register_header['key']}: registered again with engine host pid "
                f"{self.info.get('pid')}, {setup_summary(self.info.get('setup_ms') or {})}",
                flush=True,
            )
        # A new host counts this model's evictions from 0 again: keep the metric monotonic.
        self._evictions_before += self._host_evictions
        self._host_evictions = 0
        self._sock = sock

    def _watch_host(self) -> None:
        """Watcher thread: when the current host exits, reconnect now (a new host registers the model again).

        Waits on the host's pidfd, so it costs nothing per request and no polling. Without it a model would find
        its host gone only in its next request, which would then pay the new host's start-up (seconds).
        """
        while not self._closed.is_set():
            pid = self.info.get("pid")
            if self._sock is not None:
                if not isinstance(pid, int):
                    return  # a host that does not say its pid cannot be watched: requests reconnect by themselves
                exited = _wait_for_exit(pid, self._watch_stop_r)
                if exited is None:
                    return  # no pidfd here (Linux < 5.3): requests reconnect by themselves
                if not exited:
                    continue  # close() woke us
            if not self._reconnect_after_loss(pid):
                self._closed.wait(WATCH_RETRY_S)

    def _reconnect_after_loss(self, dead_pid: object) -> bool:
        """Reconnect unless a request did already; whether the model has a host now."""
        with self._lock:
            if self._closed.is_set():
                return True
            if self._sock is not None and self.info.get("pid") != dead_pid:
                return True  # a request reconnected to a new host meanwhile
            failing = self._sock is None and self._lost_host
            self._drop()
            try:
                _retrying(self._open, (OSError, WireError, HostError), self._drop)
            except (OSError, WireError, HostError) as exc:
                if not failing:  # said once per outage, not every retry
                    print(f"deepplan: {self._register_header['key']}: no engine host now ({exc})", flush=True)
                return False
            return True

    def _connect_or_start(self) -> socket.socket:
        sock = _connect(self.path)
        if sock is not None:
            return sock
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent loads: one of them starts the host
            sock = _connect(self.path)
            if sock is not None:
                return sock
            self._start_host()
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                sock = _connect(self.path)
                if sock is not None:
                    return sock
                if self._spawned is not None and self._spawned.poll() is not None:
                    raise HostError(f"engine host exited with code {self._spawned.returncode} before listening")
                if self._woken is not None and not process_alive(self._woken):
                    raise HostError(f"standby engine host pid {self._woken} exited before listening")
                # Start-up only: a new host binds its socket before importing PyTorch, a woken standby at once.
                time.sleep(0.05 if self._woken is None else 0.005)
        raise HostError(f"engine host did not listen on {self.path} within {START_TIMEOUT_S:g} s")

    def _start_host(self) -> None:
        why = "its host was lost" if self._lost_host else "no host yet"
        woken = standby.wake(self.path)  # a lost host's standby has paid the imports already
        if woken is not None:
            self._spawned, self._woken = None, woken
            print(
                f"deepplan: {self._register_header['key']}: woke standby engine host pid {woken} for GPU "
                f"{self.target} ({why})",
                flush=True,
            )
            return
        env = dict(os.environ)
        env[STATE_DIR_ENV] = str(self.state_dir)
        # The host imports what this stub imports (deepplan_backend lives in Triton's backend folder).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        cmd = [python_executable(), "-m", "deepplan_backend.hosting.engine_host", "--socket", str(self.path)]
        # Its own session: the host outlives the stub that started it (other models use it) and is not killed
        # with that stub's process group; it exits by itself once no model is left.
        self._spawned = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self._woken = None
        # Said here, not by the host: a host that replaces a dead one is the only trace of that death in the log.
        print(
            f"deepplan: {self._register_header['key']}: started engine host pid {self._spawned.pid} for GPU "
            f"{self.target} ({why})",
            flush=True,
        )

    def _drop(self) -> None:
        if self._sock is not None:
            self._lost_host = True
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._spawned is not None:
            self._spawned.poll()  # reap a host that exited

    # ---- requests -----------------------------------------------------------------------------------------------

    def answer(self, requests: Sequence[Mapping[str, np.ndarray | None]]) -> list[Answer]:
        """One `Answer` per request; a lost host is restarted and the batch retried (`_retrying`)."""
        answers: list[Answer | None] = [_unsendable(r) for r in requests]  # that request's own error, if any
        todo = [i for i, a in enumerate(answers) if a is None]
        if todo:
            for i, a in zip(todo, self._forward([requests[i] for i in todo]), strict=True):
                answers[i] = a
        return [a if a is not None else Answer(error="not answered") for a in answers]

    def _forward(self, requests: Sequence[Mapping[str, np.ndarray | None]]) -> list[Answer]:
        def attempt() -> list[Answer]:
            if self._sock is None:
                self._open()
            assert self._sock is not None
            return self._exchange(self._sock, requests)

        with self._hurry_lock:
            self._requests_waiting += 1
            self._hurry_locked()  # a registration with a new host may be under way on the watcher's thread
        try:
            with self._lock:
                try:
                    return _retrying(attempt, (OSError, WireError, HostError), self._drop)
                except (OSError, WireError, HostError) as exc:
                    return [Answer(error=f"engine host unavailable: {exc}") for _ in requests]
        finally:
            with self._hurry_lock:
                self._requests_waiting -= 1

    def _hurry_locked(self) -> None:
        """Tell a new host, once per registration, that a request waits for it (`recovery_queue`; no reply comes).

        Called with `_hurry_lock` held, by whichever thread sees both (a registration under way and a request
        waiting) first: sent behind the registration on its socket; the host reads it after its reply, as an op it
        skips.
        """
        sock = self._registering
        if sock is None or self._hurried or self._requests_waiting == 0:
            return
        self._hurried = True
        with contextlib.suppress(OSError):  # the registration's own read reports a broken socket
            send_message(sock, {"op": "hurry"})

    def _exchange(self, sock: socket.socket, requests: Sequence[Mapping[str, np.ndarray | None]]) -> list[Answer]:
        names: list[list[str]] = []
        arrays: list[np.ndarray] = []
        for request in requests:
            present = [(k, v) for k, v in request.items() if v is not None]
            names.append([k for k, _ in present])
            arrays += [v for _, v in present]
        start = time.perf_counter()
        # perf_counter is CLOCK_MONOTONIC, one clock for every process of the machine: the host and this front end
        # time each direction of the hop with it (`up_ms`, `down_ms` in the trace).
        send_message(sock, {"op": "answer", "requests": names, "sent_at": start}, arrays)
        reply, outputs = recv_message(sock)
        received = time.perf_counter()
        exchange_ms = (received - start) * 1e3
        hop = {"exchange_ms": exchange_ms}
        if isinstance(reply.get("sent_at"), float):
            hop["down_ms"] = (received - reply["sent_at"]) * 1e3
        if not reply.get("ok"):
            raise WireError(str(reply.get("error", "the host refused the request")))
        self._note_status(reply)
        it = iter(outputs)
        answers = []
        metas = reply.get("answers")
        if not isinstance(metas, list) or len(metas) != len(requests):
            raise WireError("the host's reply does not match the request")
        for meta in metas:
            output = None if meta.get("error") else next(it, None)
            if output is None and not meta.get("error"):
                raise WireError("the host's reply lacks an output")
            answers.append(
                Answer(
                    output=output,
                    cold=bool(meta.get("cold")),
                    provision_ms=float(meta.get("provision_ms", 0.0)),
                    error=meta.get("error"),
                    invalid=bool(meta.get("invalid")),
                    timing={**_timing(meta.get("timing")), **hop},
                )
            )
        return answers

    def _note_status(self, reply: Mapping[str, Any]) -> None:
        host_evictions = int(reply.get("evictions", 0))
        self._host_evictions = host_evictions
        self._status = ModelStatus(self._evictions_before + host_evictions, int(reply.get("resident_bytes", 0)))

    def status(self) -> ModelStatus:
        """Evictions (over every host this model lived in) and resident bytes, as of the last answer or refresh."""
        return self._status

    def refresh_status(self) -> ModelStatus:
        """Ask the host now (an eviction happens on another model's request); never starts a host.

        Skipped while a request of this model is in flight (its answer brings the status anyway).
        """
        if not self._lock.acquire(blocking=False):
            return self._status
        try:
            if self._sock is not None:
                try:
                    self._sock.settimeout(STATUS_TIMEOUT_S)  # a hung host must not hang the model's unload
                    send_message(self._sock, {"op": "status"})
                    reply, _ = recv_message(self._sock)
                    self._sock.settimeout(None)
                except (OSError, WireError):
                    self._drop()  # the next request reconnects
                else:
                    if reply.get("ok"):
                        self._note_status(reply)
        finally:
            self._lock.release()
        return self._status

    def close(self) -> None:
        """Model unload: closing the connection makes the host evict and unregister the model."""
        self._closed.set()
        with contextlib.suppress(OSError):
            os.write(self._watch_stop_w, b"x")
        with self._lock:
            self._drop()
        self._watcher.join(timeout=STATUS_TIMEOUT_S)
        for fd in (self._watch_stop_r, self._watch_stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _retrying(
    fn: Callable[[], T], errors: type[BaseException] | tuple[type[BaseException], ...], cleanup: Callable[[], None]
) -> T:
    """`fn()`, tried up to RETRIES times while it raises `errors` (`cleanup` after each failure, growing pauses).

    A host killed a moment ago may still accept on its socket while it dies, hence a few attempts.
    """
    for attempt in range(1, RETRIES + 1):
        try:
            return fn()
        except errors:
            cleanup()
            if attempt == RETRIES:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _wait_for_exit(pid: int, stop_fd: int) -> bool | None:
    """Block until process `pid` exits (True) or `stop_fd` becomes readable (False); None without pidfd support."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True  # already gone
    except OSError:
        return None
    try:
        readable, _, _ = select.select([pidfd, stop_fd], [], [])
    finally:
        os.close(pidfd)
    return pidfd in readable


def _timing(value: object) -> dict[str, float]:
    """The host's per-phase timing of an answer (numbers only; anything else from the wire is dropped)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _unsendable(request: Mapping[str, np.ndarray | None]) -> Answer | None:
    """The request's own INVALID answer if one of its arrays cannot cross to the host, else None."""
    for name, array in request.items():
        if array is not None and array.dtype.name not in DTYPES:
            return Answer(error=f"{name}: data type {array.dtype} is not supported", invalid=True)
    return None


def _target_of(params: Mapping[str, str]) -> int:
    """The target GPU of a KIND_CPU front end: ``target_gpu``, else the first of explicit ``devices``, else 0."""
    text = (params.get("target_gpu") or "").strip()
    if text.isdigit():
        return int(text)
    first = (params.get("devices") or "auto").replace(",", " ").split()
    return int(first[0]) if first and first[0].isdigit() else 0
