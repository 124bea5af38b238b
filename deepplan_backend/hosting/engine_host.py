"""The engine host: one process per target GPU that owns the device work of every deepplan model on it.

    python3 -m deepplan_backend.hosting.engine_host --socket /tmp/deepplan-0/3f..-0.sock

Front ends (`host_client.HostedModel`, inside Triton's per-instance stubs) start it on demand and talk to it
over a Unix socket (`wire`). Each connection is one Triton model instance: ``register`` builds its
`ServedModel` here (host weights shared by identical models of this process, plan, residency registration),
``answer`` runs a batch of its requests, ``status`` reports its evictions and resident bytes, and the
connection's end unregisters it. The CUDA contexts of a
server therefore grow with its GPUs (one host per target GPU, touching the target and its PT peers), not with
its models.

The device part of every request here — taking budget (evicting others), then the cold or warm forward — runs
on one worker thread; validation and batching stay on the model's connection thread. Budget is taken there,
not while a request waits in the queue: queued models would otherwise pin the whole budget and, under load,
every request would meet a cold start (seen in a Fig. 12 run: 80 % cold starts where LRU alone gives 50 %).
The device thread never waits for room: when the room is held by requests of other processes, the request
waits on its connection thread (`Residency.wait_for_room`) and queues again.
Eager launches are bound by this process's CPU anyway,
a cold start then owns the copy engines it was planned for, and the per-thread state of CUDA libraries (a
cuBLAS handle and workspace per thread and GPU) exists once, not once per model. The host exits when it has had no
client for ``--linger-s`` seconds (its server stopped or unloaded every model). After its first registration it
keeps a `standby` process, which replaces it if it dies; ``--standby-for PID`` makes this process one.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepplan_backend.runtime.crash_policy import prepare_to_die
from deepplan_backend.runtime.gc_pauses import freeze_long_lived

from . import standby
from .recovery_queue import RecoveryQueue
from .stall_report import StallReport
from .wire import WireError, recv_message, send_message

LINGER_S = 3.0
SETTLE_PAUSE_S = 0.0005
"""Pause between a reply and its budget release (see `_Host._answer`)."""
FIRST_MESSAGE_TIMEOUT_S = 60.0
GIL_SWITCH_ENV = "DEEPPLAN_GIL_SWITCH_MS"
"""An engine host's GIL switch interval in ms (unset: Python's 5 ms), for experiments (`benchmark.env_ab`).

A thread that wants the GIL while another runs Python (a connection thread with a request to read or a reply to
send, while the device thread runs an eager forward) waits up to this long. In a CPU experiment with a spinning
thread, 1 ms cut a round trip's p90 from 10.7 to 2.6 ms (`results/logs/s15/cpu_wire_ab/`). Serving BERT-Base on an
H100 did not gain (p50 0.44 ms worse with 1 ms, `results/README.md`), so the default stays Python's."""
RECOVERY_REGISTRATION_ENV = "DEEPPLAN_RECOVERY_REGISTRATION"
"""``parallel``: models registering again after their host died set up all at once, as before session 16 (for
comparison; deferred warm-ups still wait for them all); by default (``serial``) one at a time, those with a request
waiting first (`recovery_queue`)."""


class _Host:
    """Accepts front ends and serves each on its own thread."""

    def __init__(self, path: Path, linger_s: float) -> None:
        self.path = path
        self.linger_s = linger_s
        self.exec_lock = threading.Lock()
        self.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepplan-device")
        self._clients = 0
        self._idle_since = time.monotonic()
        self._count_lock = threading.Lock()
        self._import_lock = threading.Lock()
        self._recovery_queue = RecoveryQueue()
        self._serial_recovery = os.environ.get(RECOVERY_REGISTRATION_ENV, "serial").strip() != "parallel"
        self._stall_report = StallReport.from_environment()
        self._standby: subprocess.Popen[bytes] | None = None
        self._standby_lock = threading.Lock()
        self._standby_mode = standby.mode()  # read once: a bad value is said once, not at every registration
        # "device jobs": submitted to the device thread and not done; "recovering": registrations of models whose
        # host died, queued or setting up. Deferred warm-ups wait for both to be none (`_busy_with`).
        self._busy: collections.Counter[str] = collections.Counter()
        self._device_idle = threading.Condition()  # notified when a count drops to 0
        self._deferred: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._run_deferred, name="deepplan-warm-later", daemon=True).start()

    def serve_forever(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            self.path.unlink(missing_ok=True)  # a dead host's socket; the spawner holds the spawn lock
            server.bind(str(self.path))
            os.chmod(self.path, 0o600)
            server.listen(1024)
            server.settimeout(0.5)
            _say(f"listening on {self.path}")
            try:
                while not self._idle_too_long():
                    try:
                        conn, _ = server.accept()
                    except TimeoutError:
                        continue
                    except OSError as exc:  # e.g. out of file descriptors: the models already here keep running
                        _say(f"accept failed: {exc}")
                        time.sleep(0.5)
                        continue
                    self._start_client(conn)
            finally:
                self.path.unlink(missing_ok=True)
                standby.stop(self._standby)
        _say(f"no model left for {self.linger_s:g} s; exiting")

    def _keep_a_standby(self, served: Any) -> None:
        """Start a standby (`standby`) unless one runs: after a registration, so that it never delays a load.

        A primed standby gets this host's GPU, the target of `served` (and of every model here): the one its first
        registration and request would otherwise create a context and load kernels on.
        """
        kind = self._standby_mode
        if kind == "off":
            return
        target = served.devices[0]
        prime = target.index if kind == "primed" and target.type == "cuda" else None
        with self._standby_lock:
            if self._standby is None or self._standby.poll() is not None:
                try:
                    self._standby = standby.spawn(self.path, prime)
                except OSError as exc:  # e.g. out of processes: this host serves on, without a replacement ready
                    _say(f"cannot start a standby: {exc}")

    def _on_device_thread(self, fn: Callable[[], Any]) -> Any:
        report = self._stall_report
        with self._busy_with("device jobs"):
            return self.worker.submit(fn if report is None else lambda: report.run(fn)).result()

    @contextlib.contextmanager
    def _busy_with(self, what: str) -> Iterator[None]:
        """Count one more `what` while the block runs; `_device_idle` hears when none is left."""
        with self._device_idle:
            self._busy[what] += 1
        try:
            yield
        finally:
            with self._device_idle:
                self._busy[what] -= 1
                if self._busy[what] == 0:
                    self._device_idle.notify_all()

    def _warm_up_later(self, served: Any) -> None:
        """Queue a registered model's warm-up for when the device thread has nothing else to do.

        A replacement host registers every model of the dead one at once, while their requests wait. Warmed up at
        registration, one after another on the device thread, each model came back only after the warm-ups of
        those registered before it (session 14, 1 x H100: 0.8 s median of warm-up inside a 1.7 s set-up). Now a
        model serves as soon as it is registered; its warm-up runs when no request is on the device, and not at
        all if a request came first (that request paid the one-time costs).
        """
        self._deferred.put(served)

    def _run_deferred(self) -> None:
        """The thread that runs queued warm-ups (`_warm_up_later`), each once the device thread is idle."""
        while True:
            served = self._deferred.get()
            # Not while models still register again: a warm-up holds the device lock for hundreds of ms, and the
            # next registration's engine set-up needs it (session 16, 1 x H100: 180 ms of a set-up spent waiting).
            with self._device_idle:
                self._device_idle.wait_for(lambda: not any(self._busy.values()))
            start = time.perf_counter()
            try:
                ran = served.warm_up_deferred()
            except Exception as exc:  # the model's requests report real failures; this was only a head start
                _say(f"{served.key}: deferred warm-up failed: {type(exc).__name__}: {exc}")
                continue
            if ran:
                _say(f"{served.key}: deferred warm-up done in {(time.perf_counter() - start) * 1e3:.0f} ms")
            else:
                _say(f"{served.key}: deferred warm-up not needed (a request came first, or the model left)")

    def _start_client(self, conn: socket.socket) -> None:
        conn.settimeout(FIRST_MESSAGE_TIMEOUT_S)  # a peer that never registers must not keep the host alive
        with self._count_lock:
            self._clients += 1
        try:
            threading.Thread(target=self._serve_client, args=(conn,), daemon=True).start()
        except RuntimeError as exc:  # cannot start a thread: refuse this one, keep serving the others
            _say(f"cannot serve a new model: {exc}")
            conn.close()
            with self._count_lock:
                self._clients -= 1
                self._idle_since = time.monotonic()

    def _idle_too_long(self) -> bool:
        with self._count_lock:
            return self._clients == 0 and time.monotonic() - self._idle_since > self.linger_s

    def _serve_client(self, conn: socket.socket) -> None:
        served = None
        try:
            with conn:
                header, _ = recv_message(conn)
                conn.settimeout(None)  # registration may plan for minutes; requests come whenever they come
                served = self._register(conn, header)
                if served is None:
                    return
                while True:
                    header, arrays = recv_message(conn)
                    op = header.get("op")
                    if op == "answer":
                        self._answer(conn, served, header, arrays)
                    elif op == "hurry":  # a request waited behind the registration (`recovery_queue`): no reply
                        continue
                    elif op == "status":  # read-only, off the device thread: answered even mid-request
                        status = served.status()
                        reply = {"ok": True, "evictions": status.evictions, "resident_bytes": status.resident_bytes}
                        send_message(conn, reply)
                    else:
                        send_message(conn, {"ok": False, "error": f"unknown op {op!r}"})
        except (WireError, TimeoutError):
            pass  # the front end is gone (model unloaded, stub killed) or never registered
        except Exception:  # a bug here must not take the other models of this host down
            traceback.print_exc()
        finally:
            if served is not None:
                try:
                    served.close()
                except Exception:
                    traceback.print_exc()
            with self._count_lock:
                self._clients -= 1
                self._idle_since = time.monotonic()

    def _register(self, conn: socket.socket, header: dict[str, Any]) -> Any:
        if header.get("op") != "register":
            send_message(conn, {"ok": False, "error": "the first message must be register"})
            return None
        with self._import_lock:  # one thread pays PyTorch's import, the others wait for it
            from deepplan_backend.runtime.serve_settings import ServeSettings
            from deepplan_backend.runtime.served_model import ServedModel
        later = header.get("warm_up") == "later"  # a front end registering again after its host died
        # After a death, the models register again one at a time, those with a request waiting first
        # (`recovery_queue`).
        serial = later and self._serial_recovery
        turn = self._recovery_queue.turn(conn) if serial else contextlib.nullcontext(0.0)
        recovering = self._busy_with("recovering") if later else contextlib.nullcontext()
        with recovering, turn as waited_ms:
            try:
                settings = ServeSettings.from_parameters(header["params"], model_dir=Path(header["model_dir"]))
                settings = with_room_for_standby(settings, self._standby_mode, _has_cuda())
                served = ServedModel(
                    settings,
                    str(header["key"]),
                    int(header["max_batch_size"]),
                    header.get("instance_device"),
                    exec_lock=self.exec_lock,
                    device_runner=self._on_device_thread,
                    warm_up=not later,
                )
            except Exception as exc:  # bad config, plan refused, device missing: the load fails with this reason
                send_message(conn, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
                return None
        if serial:  # the recovery's log line then says how long each model waited its turn
            served.setup_ms = {"queued": waited_ms, **served.setup_ms}
        freeze_long_lived()  # this model's objects stay for its lifetime: no collector pass should scan them again
        try:
            send_message(conn, {"ok": True, "info": {**served.describe(), "pid": os.getpid()}})
        except OSError:  # the front end left while we prepared the model: do not keep it registered
            served.close()
            raise
        if later:
            self._warm_up_later(served)
        self._keep_a_standby(served)
        return served

    def _answer(self, conn: socket.socket, served: Any, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
        start = time.perf_counter()
        requests: list[dict[str, np.ndarray | None]] = []
        it = iter(arrays)
        try:
            for names in header["requests"]:
                requests.append({str(name): next(it) for name in names})
        except (KeyError, TypeError, StopIteration):
            send_message(conn, {"ok": False, "error": "malformed answer message: inputs do not match arrays"})
            return
        sent_at = header.get("sent_at")
        up_ms = (start - sent_at) * 1e3 if isinstance(sent_at, float) else None
        # Validation here; budget and device work on the device thread; the budget's release after the reply.
        answers: list[Any] = []
        try:
            answers = served.answer(requests, defer_release=True)
            self._reply(conn, served, start, answers, up_ms)
        finally:
            # A cold start's release at once: until then its model counts as in use, and another model's request
            # may need the room. A warm one's waits a moment, so the front end reads the reply before the release
            # competes with it for a core: without the pause, its wake-up waited for `settle` (reply to parsed 0.8
            # ms against 0.4 ms, 2-core host, tiny-bert). A request that arrives meanwhile goes first; its own
            # reply's release covers this one's.
            if any(a.cold for a in answers) or not _readable_within(conn, SETTLE_PAUSE_S):
                served.settle()

    def _reply(self, conn: socket.socket, served: Any, start: float, answers: list[Any], up_ms: float | None) -> None:
        if any(a.error and "CUDA" in a.error for a in answers):
            self._on_device_thread(_exit_if_device_broken)
        host_ms = (time.perf_counter() - start) * 1e3
        meta = [
            {
                "cold": a.cold,
                "provision_ms": a.provision_ms,
                "error": a.error,
                "invalid": a.invalid,
                "timing": {**a.timing, "host_ms": host_ms, **({"up_ms": up_ms} if up_ms is not None else {})},
            }
            for a in answers
        ]
        outputs = [a.output for a in answers if a.output is not None]
        status = served.status()
        reply = {"ok": True, "answers": meta, "evictions": status.evictions, "resident_bytes": status.resident_bytes}
        send_message(conn, {**reply, "sent_at": time.perf_counter()}, outputs)


def _readable_within(conn: socket.socket, timeout_s: float) -> bool:
    """Whether a message (or the peer's close) arrives on `conn` within `timeout_s`."""
    try:
        readable, _, _ = select.select([conn], [], [], timeout_s)
    except (OSError, ValueError):  # closed meanwhile: nothing to wait for
        return True
    return bool(readable)


def _exit_if_device_broken() -> None:
    """After a CUDA error: if the context is unusable (a sticky error), exit so that front ends start a new host.

    Otherwise every model of this GPU would answer UNAVAILABLE forever; a new process gets a new context.
    """
    import torch

    if not torch.cuda.is_available():
        return
    try:
        torch.cuda.synchronize()
    except Exception as exc:
        _say(f"CUDA context unusable ({exc}); exiting so that a new host takes over")
        os._exit(3)


def apply_gil_switch_interval() -> float | None:
    """Set the switch interval from `GIL_SWITCH_ENV`; the ms set, or None (unset, or refused with a message)."""
    text = os.environ.get(GIL_SWITCH_ENV, "").strip()
    if not text:
        return None
    try:
        ms = float(text)
    except ValueError:
        ms = float("nan")
    if not 0 < ms <= 1000:  # NaN fails too
        _say(f"{GIL_SWITCH_ENV}={text!r} ignored: give milliseconds in (0, 1000]")
        return None
    sys.setswitchinterval(ms / 1e3)
    _say(f"GIL switch interval {ms:g} ms ({GIL_SWITCH_ENV})")
    return ms


def _say(message: str) -> None:
    print(f"deepplan engine host (pid {os.getpid()}): {message}", flush=True)


def with_room_for_standby(settings: Any, mode: str, cuda: bool) -> Any:
    """`settings` (a `ServeSettings`) whose automatic budget also leaves room for a primed standby's context.

    The standby is this process's doing, not the user's, so the user's `reserve` (other processes, activations)
    is not made to cover it. An explicit budget is left as it is: its owner chose it.
    """
    if mode != "primed" or not cuda or settings.budget is not None:
        return settings
    return dataclasses.replace(settings, reserve=settings.reserve + standby.PRIMED_CONTEXT_BYTES)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _gpu_index(text: str) -> int:
    """``"1"`` -> 1, for argparse (a GPU index is 0 or more)."""
    try:
        index = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a GPU index, e.g. 0") from None
    if index < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a GPU index is 0 or more")
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; see the module docstring."""
    p = argparse.ArgumentParser(
        prog="python3 -m deepplan_backend.hosting.engine_host", description=__doc__.split("\n")[0]
    )
    p.add_argument("--socket", type=Path, required=True, help="Unix socket path to listen on")
    p.add_argument("--linger-s", type=float, default=LINGER_S, help="exit after this long without a model")
    p.add_argument(
        standby.STANDBY_FLAG,
        type=int,
        metavar="PID",
        help="be the standby of host PID: wait, imported, until a front end wakes this process to replace it",
    )
    p.add_argument(
        standby.PRIME_FLAG,
        type=_gpu_index,
        metavar="GPU",
        help="as a standby: create a CUDA context on this GPU and run a few kernels there while waiting",
    )
    args = p.parse_args(argv)
    # A host that dies of a signal (SIGSEGV in a native library) would otherwise leave no line in the server's log
    # (its front ends just start a new one: session 11 lost eight hosts that way), and could hold every GPU's
    # requests while its core is written.
    prepare_to_die()
    apply_gil_switch_interval()
    if args.standby_for is not None:
        if not standby.wait_to_be_woken(args.socket, args.standby_for, args.prime_gpu):
            return 0
        _say(f"standby woken to replace host pid {args.standby_for}")
    _Host(args.socket, args.linger_s).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
