"""GPU memory oversubscription across every deepplan model of one server, whichever processes they run in.

Triton runs one stub process per model instance, so the budget of a device cannot live in one process's memory.
It lives in a small shared *state file* per device of the server (``<state_dir>/<device>.state``, e.g.
``cuda%3A0.state``) guarded by ``fcntl.flock`` on ``<state_dir>/<device>.lock``. It records the device's budget,
and for each model registered on the device (``key``, unique per server):

- ``pid`` and the process start time of its owner (so a dead or recycled pid is recognised),
- ``device``, ``bytes`` (resident bytes, or the reservation of a provisioning in flight),
- ``last_used`` (LRU order), ``in_use`` (a request is running: never a victim), ``evicting`` (an eviction
  was asked for and is not done yet).

One file per device, not one per server: a model's budget, victims and waiters are all on its own device, so
devices never wait for one another. A process stopped while it holds a device's lock (killed while its core is
written: 6-7 s measured on the CPU host, session 11) holds up that device only, and each file is written only by
the processes serving its device, so that with one engine host per GPU a host finds the file as it last wrote it
(no parse) and judges no other owner's liveness.

Protocol (all reads and writes of the state happen under the lock; no lock is held while waiting):

1. ``acquire(key, need)`` before a request: dead owners' entries are dropped (their budget comes back);
   the entry is marked in use. If it is resident, done (warm). Otherwise, if ``need`` exceeds the budget,
   `DoesNotFit`; if it fits beside the others, the bytes are reserved; else the least recently used idle
   resident models are marked ``evicting`` until it fits, and the bytes are reserved.
   If the room is held by models in use, the caller registers as a waiter and sleeps until a release wakes it.
2. Victims are asked to evict over their owner's *listener*: every process that registers a model runs one
   daemon thread on an abstract Unix socket; it calls the model's evict callback and answers. The asker blocks
   on that answer (no polling). An idle stub process therefore answers at once, whatever its main thread does.
   A victim of the asker's own process (an engine host's models) is evicted by a direct call instead, and the
   evictions are recorded in the same locked use that then reserves the room.
3. ``release(key, resident_bytes)`` after the request: records the real resident bytes, clears ``in_use`` and
   wakes waiters (a one-byte message to their listeners).

A crashed owner leaks nothing: its entries are reclaimed the next time anybody takes the lock (pid gone or
reused). CPU mode uses the same code, with the host memory as "device".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import marshal
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

STATE_DIR_ENV = "DEEPPLAN_RESIDENCY_DIR"
"""Environment variable naming the state folder (overrides the per-server default)."""
BUDGET_ENV = "DEEPPLAN_BUDGET_BYTES"
"""Environment variable giving one budget (bytes) for every device of the server."""
DEFAULT_RESERVE_BYTES = 1 << 30
"""Memory of a device kept out of the budget by default (CUDA contexts, activations, other users)."""
EVICT_TIMEOUT_S = 60.0
WAIT_TIMEOUT_S = 120.0
ALIVE_TTL_S = 0.2
"""How long a process's liveness, once checked, is trusted: every locked use reclaims dead owners, and reading
/proc for each of them on every request cost a third of a locked use. A dead owner's budget then comes back
within this long of its death."""


class ResidencyError(RuntimeError):
    """Base class for residency failures."""


class DoesNotFit(ResidencyError):
    """One model needs more than the device's whole budget."""


class BudgetBusy(ResidencyError):
    """The budget stayed held by models in use for longer than the wait limit."""


class RoomBusy(BudgetBusy):
    """``acquire(..., wait=False)``: the room is held by models in use right now (see `Residency.wait_for_room`)."""


def default_state_dir() -> Path:
    """``$DEEPPLAN_RESIDENCY_DIR``, else one folder per server: the stubs' parent process is ``tritonserver``."""
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env)
    return server_state_dir(os.getppid())


def state_base() -> Path:
    """Where state folders live by default: ``/dev/shm`` (memory) where there is one, else the temporary folder."""
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def server_state_dir(server_pid: int) -> Path:
    """The default state folder of the ``tritonserver`` with this pid."""
    return state_base() / f"deepplan-residency-{server_pid}"


def scratch_state_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary state folder beside the default ones, for benchmarks and experiments.

    Every request updates the state file once or twice. In memory that costs ~0.2 ms; on the disk-backed
    temporary folder of the CPU host it cost 0.4-1.4 ms per update, which the benchmarks then reported as cold-start
    time that a server with its default folder does not pay.
    """
    return tempfile.TemporaryDirectory(prefix=prefix, dir=state_base())


def remove_unused_state_dir(folder: Path) -> bool:
    """Delete a state folder unless a live process still owns a model in it (a stopped server's); whether it is gone."""
    entries = []
    for path in folder.glob(f"*{STATE_SUFFIX}"):
        try:
            state = _decode(path.read_bytes())
        except FileNotFoundError:
            continue
        except OSError:
            return False  # unreadable: not ours to judge
        models = state.get("models") if isinstance(state, dict) else None
        entries += [e for e in (models or {}).values() if isinstance(e, dict) and isinstance(e.get("pid"), int)]
    if any(process_alive(e["pid"], e.get("start")) for e in entries):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


STATE_SUFFIX = ".state"
"""A device's state file in a state folder: `device_file_stem` + this (its lock: the stem + ``.lock``)."""


def device_file_stem(device: str) -> str:
    """The name of `device`'s state and lock files, without suffix: the device, %-escaped (``cuda%3A0``)."""
    return urllib.parse.quote(device, safe="")


MARSHAL_VERSION = 4
"""The current marshal format: shared strings (socket names, devices) are written once, which halves the file and
the time to write and read it against version 2. An unchanged state may then encode to other bytes (references
follow reference counts), costing one needless write, never a wrong one."""


def _encode(state: dict) -> bytes:
    """The state file's content for `state`.

    marshal, not JSON: every request takes the state twice or three times and it grows with the models; with 200
    models JSON took ~1 ms to write and ~0.9 ms to parse on a 2-core host, marshal 0.1 and 0.2 ms. It reads only
    plain values (no code runs on load, unlike pickle), and every process of one server runs the same Python.
    """
    return marshal.dumps(state, MARSHAL_VERSION)


def _decode(data: bytes) -> dict:
    """The state in `data`; an empty or unreadable file is an empty state (its owners re-register on next use)."""
    if not data:
        return {}
    try:
        state = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        return {}
    return state if isinstance(state, dict) else {}


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data.rsplit(")", 1)[1].split()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/<pid>/stat), or None if it is gone."""
    fields = _stat(pid)
    return None if fields is None else fields[19]


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process `pid` runs (a zombie does not), and is the one that started at `start` when given."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat(pid)
    if fields is None:
        return Path("/proc").is_dir() is False  # no procfs: trust kill(0)
    if fields[0] in ("Z", "X"):  # a killed stub stays a zombie until tritonserver reaps it
        return False
    return start is None or fields[19] == start


def _socket_name(state_dir: Path, pid: int) -> str:
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return f"\0deepplan-res-{digest}-{pid}"


def _send(name: str, message: bytes, timeout: float | None) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(name)
        s.sendall(message + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@dataclass(frozen=True)
class Grant:
    """What `acquire` decided: warm (already resident) or cold (bytes reserved), and who was evicted for it.

    `evict_ms` is how long those evictions took; the rest of `acquire` is the state file's bookkeeping.
    """

    warm: bool
    evicted: tuple[str, ...] = ()
    evict_ms: float = 0.0


class _Listener:
    """One per process and state folder: answers eviction requests and wake-ups from other processes."""

    def __init__(self, state_dir: Path) -> None:
        self.pid = os.getpid()
        self.name = _socket_name(state_dir, self.pid)
        self.callbacks: dict[str, Callable[[], None]] = {}
        self.devices: dict[str, str] = {}  # key -> device, for the models this process registered
        self.wake = threading.Condition()
        self.generation = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.name)
        self.sock.listen(64)
        self.thread = threading.Thread(target=self._serve, name="deepplan-residency", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            with contextlib.suppress(OSError):
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            cmd, _, arg = data.decode(errors="replace").strip().partition(" ")
            reply = "ok"
            if cmd == "evict":
                reply = self.evict(arg)
            elif cmd == "wake":
                self.notify()
            with contextlib.suppress(OSError):
                conn.sendall(reply.encode())

    def evict(self, key: str) -> str:
        """Run `key`'s evict callback (none registered: nothing to evict); "ok", or the error for the asker."""
        callback = self.callbacks.get(key)
        try:
            if callback is not None:
                callback()
        except Exception as exc:  # answered to the asker, who reports it
            return f"error {type(exc).__name__}: {exc}"
        return "ok"

    def notify(self) -> None:
        with self.wake:
            self.generation += 1
            self.wake.notify_all()


_PerProcess = TypeVar("_PerProcess", "_Listener", "_StateFile")
_per_process_lock = threading.Lock()


def _for_this_process(
    registry: dict[Hashable, _PerProcess], name: Hashable, make: Callable[[], _PerProcess]
) -> _PerProcess:
    """The one `make()` of this process for `name`; a forked child makes its own (no shared sockets or files)."""
    with _per_process_lock:
        item = registry.get(name)
        if item is None or item.pid != os.getpid():
            item = registry[name] = make()
        return item


class _StateFile:
    """One process's access to one device's state file, shared by all its `Residency` objects.

    flock excludes other open files, not other threads, so threads take `thread_lock` first; `cache` is the state
    file's text and its parse as this process last saw them.
    """

    def __init__(self, state_dir: Path, device: str) -> None:
        self.pid = os.getpid()
        self.start = _start_time(self.pid)
        stem = device_file_stem(device)
        self.path = state_dir / f"{stem}{STATE_SUFFIX}"
        self.thread_lock = threading.Lock()
        self.lock_file: IO[str] = open(state_dir / f"{stem}.lock", "a+")  # noqa: SIM115 - open for the process's life
        self.cache: tuple[bytes, dict] | None = None
        self.alive: dict[tuple[int, str | None], tuple[bool, float]] = {}  # (pid, start) -> (alive, checked at)

    def is_dead(self, pid: int, start: str | None) -> bool:
        """Whether the owner (pid, start time) is gone.

        This process is known alive; others are checked at most every `ALIVE_TTL_S` (an answer for a pid
        without start time may change when the pid is reused).
        """
        if pid == self.pid:
            return start is not None and start != self.start  # a dead predecessor with our pid
        now = time.monotonic()
        known = self.alive.get((pid, start))
        if known is not None and now - known[1] < ALIVE_TTL_S:
            return not known[0]
        alive = process_alive(pid, start)
        if len(self.alive) > 4096:  # pids come and go over a server's life
            self.alive.clear()
        self.alive[(pid, start)] = (alive, now)
        return not alive


_listeners: dict[Hashable, _Listener] = {}
_state_files: dict[Hashable, _StateFile] = {}


class Residency:
    """The shared budget of one server, as seen from one process.

    Args:
        state_dir: the server's state folder (created if missing).
        budgets: device name -> budget in bytes this process declares (the smallest declared value wins).
    """

    def __init__(self, state_dir: Path | str | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._listener = _for_this_process(_listeners, self.state_dir, lambda: _Listener(self.state_dir))
        self._pid, self._start = os.getpid(), _start_time(os.getpid())

    # ---- state file -------------------------------------------------------------------------------------------

    def _file(self, device: str) -> _StateFile:
        return _for_this_process(_state_files, (self.state_dir, device), lambda: _StateFile(self.state_dir, device))

    def _device(self, key: str) -> str:
        """The device `key` was registered on by this process; ResidencyError if it was not."""
        device = self._listener.devices.get(key)
        if device is None:
            raise ResidencyError(f"{key} is not registered by this process (pid {self._pid})")
        return device

    @contextlib.contextmanager
    def _locked(self, device: str) -> Iterator[dict]:
        # Every request takes this twice and the state grows with the device's models (200 models: ~45 KB), so a
        # use costs one read, one serialisation and, if the state changed, one write; the parse is skipped when
        # the file still holds the text this process last saw (the usual case: one engine host per GPU).
        shared = self._file(device)
        with shared.thread_lock:
            fcntl.flock(shared.lock_file, fcntl.LOCK_EX)
            try:
                text, state = self._read(shared)
                # From here the dict may differ from the file until the write below succeeds: a failure anywhere
                # (the caller, reclaim, a full /dev/shm) must not leave it in the cache as if it were the file.
                shared.cache = None
                self._reclaim(state, shared)
                yield state
                new = _encode(state)
                if new != text:  # usually differs when the state did (see MARSHAL_VERSION)
                    tmp = shared.path.with_suffix(f".{self._pid}.tmp")
                    tmp.write_bytes(new)
                    os.replace(tmp, shared.path)
                shared.cache = (new, state)
            finally:
                fcntl.flock(shared.lock_file, fcntl.LOCK_UN)

    @staticmethod
    def _read(shared: _StateFile) -> tuple[bytes, dict]:
        try:
            text = shared.path.read_bytes()
        except OSError:
            text = b""
        cache = shared.cache
        if cache is not None and cache[0] == text:
            return cache
        state = _decode(text)
        state.setdefault("budgets", {})
        state.setdefault("models", {})
        state.setdefault("waiters", {})
        return text, state

    @staticmethod
    def _reclaim(state: dict, shared: _StateFile) -> None:
        """Drop entries and waiters of dead processes; undo evictions asked by a dead process."""
        # Every locked use runs this, and a server has a few owners (an engine host per GPU) for up to hundreds of
        # models: judge each owner once, and walk the entries only when one is dead (rarely).
        models, waiters = state["models"], state["waiters"]
        owners = {(e["pid"], e.get("start")) for e in models.values()}
        owners.update((w["pid"], w.get("start")) for w in waiters.values())
        owners.update((e["evicting"], None) for e in models.values() if e.get("evicting"))
        dead = {owner for owner in owners if shared.is_dead(*owner)}
        if not dead:
            return
        for key, entry in list(models.items()):
            if (entry["pid"], entry.get("start")) in dead:
                del models[key]
            elif entry.get("evicting") and (entry["evicting"], None) in dead:
                entry["evicting"] = 0
        for name, waiter in list(waiters.items()):
            if (waiter["pid"], waiter.get("start")) in dead:
                del waiters[name]

    # ---- public API -------------------------------------------------------------------------------------------

    def register(self, key: str, device: str, budget: int | None, evict: Callable[[], None]) -> None:
        """Make `key` (unique per server) known on `device`; `evict` frees its device bytes when asked."""
        previous = self._listener.devices.get(key)
        if previous is not None and previous != device:
            self.unregister(key)
        self._listener.callbacks[key] = evict
        self._listener.devices[key] = device
        with self._locked(device) as state:
            if budget is not None:
                current = state["budgets"].get(device)
                state["budgets"][device] = budget if current is None else min(current, budget)
            state["models"][key] = {
                "pid": self._pid,
                "start": self._start,
                "socket": self._listener.name,
                "device": device,
                "bytes": 0,
                "resident": False,
                "last_used": 0.0,
                "in_use": False,
                "evicting": 0,
            }

    def unregister(self, key: str) -> None:
        """Forget `key` (its bytes return to the budget); call after evicting it."""
        self._listener.callbacks.pop(key, None)
        device = self._listener.devices.pop(key, None)
        if device is None:  # never registered here (or unregistered already)
            return
        with self._locked(device) as state:
            state["models"].pop(key, None)
            waiters = list(state["waiters"])
        self._wake_waiters(waiters)

    def budget(self, device: str) -> int | None:
        """The device's budget, or None if no model declared one."""
        with self._locked(device) as state:
            return state["budgets"].get(device)

    def devices(self) -> list[str]:
        """The devices that have a state file in this folder (a model was registered on them), sorted."""
        stems = (p.name.removesuffix(STATE_SUFFIX) for p in self.state_dir.glob(f"*{STATE_SUFFIX}"))
        return sorted(urllib.parse.unquote(stem) for stem in stems)

    def device_snapshot(self, device: str) -> dict:
        """A copy of one device's (reclaimed) state: its budget, models and waiters."""
        with self._locked(device) as state:
            return _decode(_encode(state))

    def snapshot(self) -> dict:
        """A copy of the (reclaimed) state of every device, merged: budgets, models, waiters.

        Each device's part is read under its own lock, one after the other: the parts are each consistent, not
        taken at one instant (no use of the residency needs two devices at once).
        """
        merged: dict[str, dict] = {"budgets": {}, "models": {}, "waiters": {}}
        for device in self.devices():
            part = self.device_snapshot(device)
            for name, values in merged.items():
                values.update(part[name])
        return merged

    def used(self, device: str) -> int:
        """Bytes counted against `device` right now (resident models and reservations)."""
        return sum(e["bytes"] for e in self.device_snapshot(device)["models"].values())

    def acquire(self, key: str, need: int, timeout_s: float = WAIT_TIMEOUT_S, wait: bool = True) -> Grant:
        """Mark `key` in use and make room for `need` bytes unless it is resident already.

        Raises DoesNotFit when `need` exceeds the whole budget, BudgetBusy when models in use kept the room
        for `timeout_s`, ResidencyError when a victim could not be evicted. With ``wait=False``, RoomBusy at once
        instead of waiting for models in use (a caller that must not block, like an engine host's device thread,
        waits with `wait_for_room` elsewhere and tries again).
        """
        device = self._device(key)
        deadline = time.monotonic() + timeout_s
        evicted: list[str] = []
        outcomes: dict[str, str] = {}  # victims evicted since the last locked use -> their owners' replies
        evict_s = 0.0
        wake: list[str] = []
        try:
            while True:
                generation = self._listener.generation
                wake = []
                with self._locked(device) as state:
                    # The evictions of the last round are recorded in the same locked use that plans this one
                    # (and, usually, reserves): one state-file update per round instead of three.
                    errors = self._record_evictions(state, outcomes)
                    if outcomes:
                        wake = list(state["waiters"])
                    outcomes = {}
                    if errors:
                        raise ResidencyError("eviction failed: " + "; ".join(errors))
                    entry = self._entry(state, key)
                    victims, outcome = self._plan(state, key, entry, need)
                    if outcome in ("warm", "reserved"):
                        entry.update(in_use=True, last_used=time.time())
                        if outcome == "reserved":
                            entry.update(bytes=need, resident=False)
                        state["waiters"].pop(self._listener.name, None)
                        wake = [w for w in wake if w != self._listener.name]
                        return Grant(outcome == "warm", tuple(evicted), evict_s * 1e3)
                    targets = []
                    if outcome == "evict":
                        for v in victims:
                            state["models"][v]["evicting"] = self._pid
                        targets = [(v, state["models"][v]["socket"]) for v in victims]
                    elif wait:  # the room is held by models in use (or being evicted by others)
                        state["waiters"][self._listener.name] = {"pid": self._pid, "start": self._start}
                if targets:
                    started = time.perf_counter()
                    outcomes = self._evict_each(targets)
                    evict_s += time.perf_counter() - started
                    evicted.extend(v for v, _ in targets)
                    continue
                if not wait:
                    raise RoomBusy(f"{key}: no room for {need} bytes now: the budget is held by models in use")
                self._sleep_until_woken(key, device, need, generation, deadline, timeout_s)
        finally:
            if outcomes:  # left between evicting and recording (e.g. interrupted): record, never leave marks
                with self._locked(device) as state:
                    self._record_evictions(state, outcomes)
                    wake = list(state["waiters"])
            self._wake_waiters(wake)

    def wait_for_room(self, key: str, need: int, timeout_s: float = WAIT_TIMEOUT_S) -> None:
        """Wait, reserving nothing, until `acquire(key, need)` would not have to wait for models in use.

        Another process may take the room first: the caller then tries again (acquire with ``wait=False``).
        Raises DoesNotFit or BudgetBusy like `acquire`.
        """
        device = self._device(key)
        deadline = time.monotonic() + timeout_s
        while True:
            generation = self._listener.generation
            with self._locked(device) as state:
                _, outcome = self._plan(state, key, self._entry(state, key), need)
                if outcome != "wait":
                    state["waiters"].pop(self._listener.name, None)
                    return
                state["waiters"][self._listener.name] = {"pid": self._pid, "start": self._start}
            self._sleep_until_woken(key, device, need, generation, deadline, timeout_s)

    def _sleep_until_woken(
        self, key: str, device: str, need: int, generation: int, deadline: float, timeout_s: float
    ) -> None:
        """Sleep until a release wakes this process's listener; BudgetBusy, no longer a waiter, past the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            with self._locked(device) as state:
                state["waiters"].pop(self._listener.name, None)
            raise BudgetBusy(
                f"{key}: no room for {need} bytes within {timeout_s:.0f} s: the budget is held by models in use"
            )
        with self._listener.wake:
            if self._listener.generation == generation:
                # Woken by a release (or an eviction finishing); the cap only bounds a lost wake-up.
                self._listener.wake.wait(timeout=min(remaining, 5.0))

    def release(self, key: str, resident_bytes: int) -> None:
        """The request of `key` ended; `resident_bytes` stay on the device (0 if the cold start failed)."""
        device = self._listener.devices.get(key)
        if device is None:  # unregistered meanwhile: nothing of it is counted any more
            return
        with self._locked(device) as state:
            entry = state["models"].get(key)
            if entry is not None:
                entry.update(
                    in_use=False, bytes=int(resident_bytes), resident=resident_bytes > 0, last_used=time.time()
                )
            waiters = list(state["waiters"])
        self._wake_waiters(waiters)

    # ---- internals --------------------------------------------------------------------------------------------

    def _entry(self, state: dict, key: str) -> dict:
        entry = state["models"].get(key)
        if entry is None or entry["pid"] != self._pid:
            raise ResidencyError(f"{key} is not registered by this process (pid {self._pid})")
        return entry

    @staticmethod
    def _plan(state: dict, key: str, entry: dict, need: int) -> tuple[list[str], str]:
        if entry.get("evicting"):
            return [], "wait"  # someone asked to evict us: let that finish, then start cold
        if entry["resident"]:
            return [], "warm"
        device = entry["device"]
        budget = state["budgets"].get(device)
        if budget is None:
            return [], "reserved"
        if need > budget:
            raise DoesNotFit(
                f"{key} needs {need / 2**20:.1f} MiB on {device}, more than the whole budget of "
                f"{budget / 2**20:.1f} MiB: raise the budget (parameter `budget`) or use a smaller model/dtype"
            )
        others = {k: e for k, e in state["models"].items() if k != key and e["device"] == device}
        used = sum(e["bytes"] for e in others.values())
        if used + need <= budget:
            return [], "reserved"
        idle = sorted(
            (k for k, e in others.items() if e["resident"] and not e["in_use"] and not e["evicting"]),
            key=lambda k: others[k]["last_used"],
        )
        victims, freed = [], 0
        for k in idle:
            if used - freed + need <= budget:
                break
            victims.append(k)
            freed += others[k]["bytes"]
        if used - freed + need > budget:
            return [], "wait"
        return victims, "evict"

    def _evict_each(self, targets: list[tuple[str, str]]) -> dict[str, str]:
        """Ask each victim's owner to evict it; the owners' replies ("ok", "gone" or an error), not yet recorded.

        A victim of this very process is evicted by a direct call (no socket round trip to our own listener):
        its callback takes that model's own lock, which no caller of `acquire` holds.
        """
        replies = {}
        for key, sock in targets:
            if sock == self._listener.name:
                replies[key] = self._listener.evict(key)
                continue
            try:
                replies[key] = _send(sock, f"evict {key}".encode(), EVICT_TIMEOUT_S).decode(errors="replace")
            except (ConnectionRefusedError, FileNotFoundError):
                replies[key] = "gone"  # the owner died: reclaim drops it on the next lock
            except OSError as exc:
                replies[key] = f"error {exc}"
        return replies

    @staticmethod
    def _record_evictions(state: dict, replies: dict[str, str]) -> list[str]:
        """Record the victims' replies in the state (under the caller's lock); the failures, as messages."""
        errors = []
        for key, reply in replies.items():
            entry = state["models"].get(key)
            if entry is None:
                continue
            if reply in ("ok", "gone"):
                entry.update(bytes=0, resident=False, evicting=0)
                if reply == "gone":
                    state["models"].pop(key, None)
            else:
                entry["evicting"] = 0
                errors.append(f"{key}: {reply}")
        return errors

    def _wake_waiters(self, names: list[str]) -> None:
        """Wake the waiters `names` (a device's, as read under the lock the caller held)."""
        for name in names:
            if name == self._listener.name:
                self._listener.notify()
                continue
            with contextlib.suppress(OSError):
                _send(name, b"wake", 2.0)
