"""The standby engine host: a process that has paid Python's start and the imports, waiting to replace its GPU's host.

A host that dies (a crash in a native library, a sticky CUDA error) takes the device work of its models with it.
Their front ends reconnect at once (`host_client`), and every model registers again in a new host. A fresh
process first pays the interpreter's start and the imports of PyTorch, `transformers` and the model classes:
seconds, inside every one of those models' outage. A standby has paid them already.

- A running host starts one after its first model has registered (so the imports do not compete with that load),
  and again whenever its standby is gone.
- The front end that must replace a lost host wakes the standby (`wake`, under the spawn lock) instead of
  starting a process; the standby then becomes the host (`engine_host.main`) and starts a standby of its own.
- By default it is *primed* (`prime_gpu`): after the imports it creates its CUDA context on its host's GPU
  and runs a few small kernels there, so that the first registration and the first request after a death do not
  pay them. On an H100 a fresh process paid 300-340 ms for its context and 120-185 ms of
  one-time costs in its first BERT-Base forward; primed, 0.2 ms and 26 ms. After a host's death under load the
  first answer came 0.53 s after the kill with a cold standby and 0.30 s with a primed one (`results/README.md`).
  The price is that context, held while it waits: 724 MiB on that H100 (`results/logs/s17/`). An automatic budget
  leaves room for it (`PRIMED_CONTEXT_BYTES`, beside the `reserve`). PT peers are not primed: a context on every
  peer of every GPU's standby would hold about half a GB more on each GPU per peer, for an outage that
  only a host's death opens; a new host creates its peer contexts when its first model registers, as before.
- It exits when its host stops it (the host's normal exit), or `ORPHAN_WAIT_S` after its host died without anyone
  waking it (the server went down with it).

``DEEPPLAN_STANDBY`` in the server's environment: ``primed`` (the default; ``1`` says the same), ``cold`` (a
standby that holds no CUDA context and no GPU memory until it is woken), ``0`` (none: a standby costs a Python
process with PyTorch imported, a few hundred MB of host memory per GPU).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .wire import WireError, recv_message, send_message

STANDBY_ENV = "DEEPPLAN_STANDBY"
ORPHAN_WAIT_S = 30.0
"""How long a standby whose host died waits to be woken before it concludes that the server is gone."""
WAKE_TIMEOUT_S = 5.0
STANDBY_FLAG = "--standby-for"
"""The engine host's option that makes it a standby; a woken standby keeps it on its command line."""
PRIME_FLAG = "--prime-gpu"
"""The standby's option naming the GPU to prime: its host's."""
PRIMED_CONTEXT_BYTES = 768 << 20
"""GPU memory a primed standby holds on its host's GPU (724 MiB measured on an H100, rounded up): what an automatic
budget leaves for it beside the model's `reserve`."""


MODES = {"primed": "primed", "1": "primed", "cold": "cold", "0": "off"}
"""``$DEEPPLAN_STANDBY``'s values and what each means."""


def mode() -> str:
    """``primed``, ``cold`` or ``off`` from ``$DEEPPLAN_STANDBY`` (unset: primed; unknown: said, then primed)."""
    text = os.environ.get(STANDBY_ENV, "").strip().lower() or "primed"
    found = MODES.get(text)
    if found is None:
        print(
            f"deepplan: {STANDBY_ENV}={text!r} is not one of {', '.join(sorted(MODES))}; using 'primed'",
            file=sys.stderr,
            flush=True,
        )
        return "primed"
    return found


def control_path(host_socket: Path) -> Path:
    """Where the standby of the host listening on `host_socket` waits to be woken."""
    return host_socket.with_suffix(".standby")


def spawn_command(host_socket: Path, prime: int | None = None) -> list[str]:
    """The command line of a standby for this process, the host listening on `host_socket`, primed on GPU `prime`."""
    cmd = [
        sys.executable,
        "-m",
        "deepplan_backend.hosting.engine_host",
        "--socket",
        str(host_socket),
        STANDBY_FLAG,
        str(os.getpid()),
    ]
    if prime is not None:
        cmd += [PRIME_FLAG, str(prime)]
    return cmd


def spawn(host_socket: Path, prime: int | None = None) -> subprocess.Popen[bytes]:
    """Start a standby (`spawn_command`) in its own session: it outlives us."""
    return subprocess.Popen(spawn_command(host_socket, prime), stdin=subprocess.DEVNULL, start_new_session=True)


def wake(host_socket: Path) -> int | None:
    """Wake the standby of `host_socket`'s (lost) host; its pid, or None when there is none to wake.

    Called by a front end holding the spawn lock: the woken standby binds `host_socket` next, so the caller waits
    for it there as for a host it started.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAKE_TIMEOUT_S)
        try:
            sock.connect(str(control_path(host_socket)))
            send_message(sock, {"op": "wake"})
            reply, _ = recv_message(sock)
        except (OSError, WireError):
            return None  # none there, or it died meanwhile: the caller starts a process instead
    pid = reply.get("pid")
    return pid if reply.get("ok") and isinstance(pid, int) else None


def wait_to_be_woken(host_socket: Path, host_pid: int, prime: int | None = None) -> bool:
    """The standby's life until it is needed: True when a front end woke it, False when it should exit.

    Imports what a host needs on a thread meanwhile, then primes GPU `prime` (`prime_gpu`); a wake that comes
    before they are done is answered at once (the registration then waits for the work already under way).
    """
    path = control_path(host_socket)
    signal.signal(signal.SIGTERM, _exit_on_term)  # stopped by its host: remove the control socket on the way out

    def get_ready() -> None:
        if preload_imports() and prime is not None:
            prime_gpu(prime)

    threading.Thread(target=get_ready, name="deepplan-standby-preload", daemon=True).start()
    try:
        pidfd: int | None = os.pidfd_open(host_pid)
    except ProcessLookupError:
        return False  # the host is gone already: nobody to stand by for
    except OSError:
        pidfd = None  # no pidfd (Linux < 5.3): only a wake or SIGTERM ends the wait
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        path.unlink(missing_ok=True)  # a previous standby's, killed without its cleanup
        server.bind(str(path))
        os.chmod(path, 0o600)
        server.listen(16)
        try:
            return _serve_wake(server, pidfd)
        finally:
            path.unlink(missing_ok=True)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if pidfd is not None:
                os.close(pidfd)


def _serve_wake(server: socket.socket, pidfd: int | None) -> bool:
    orphaned_at: float | None = None
    while True:
        watched: list[socket.socket | int] = [server] if pidfd is None or orphaned_at is not None else [server, pidfd]
        timeout = None if orphaned_at is None else max(0.0, orphaned_at + ORPHAN_WAIT_S - time.monotonic())
        readable, _, _ = select.select(watched, [], [], timeout)
        if not readable:
            return False  # the host died and nobody came for us: the server is gone
        if pidfd is not None and pidfd in readable:
            orphaned_at = time.monotonic()
        if server in readable:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(WAKE_TIMEOUT_S)
                try:
                    request, _ = recv_message(conn)
                    if request.get("op") == "wake":
                        send_message(conn, {"ok": True, "pid": os.getpid()})
                        return True
                    send_message(conn, {"ok": False, "error": "a standby only answers wake"})
                except (OSError, WireError):
                    continue


def preload_imports() -> bool:
    """Import what every registration needs, so that a woken standby skips it (seconds on a fresh process).

    Returns whether the imports are done.
    """
    start = time.perf_counter()
    try:
        import transformers

        import deepplan_backend.runtime.served_model  # noqa: F401  (PyTorch and the runtime)
        from deepplan_backend.runtime.zoo import TINY_MODELS, load_model

        # `transformers` imports model code lazily, on first attribute access: each family's classes, now.
        for name in ("BertModel", "RobertaModel", "GPT2LMHeadModel", "ResNetForImageClassification"):
            getattr(transformers, name)
        # Whatever constructing a model imports besides: a skeleton of each family on the meta device (milliseconds,
        # no memory; it leaves the random generator alone, which a registration may be using).
        for name in TINY_MODELS:
            load_model(name, skeleton=True)
        # In the log: a host that dies before its standby is done gets a replacement that finishes the imports first.
        print(f"deepplan standby (pid {os.getpid()}): imports done in {time.perf_counter() - start:.1f} s", flush=True)
        return True
    except Exception as exc:  # the host's own registration reports a broken install; this is only a head start
        print(f"deepplan standby (pid {os.getpid()}): preload failed: {exc}", flush=True)
        return False


def prime_gpu(index: int) -> float | None:
    """Create this process's CUDA context on GPU `index` and run a few small kernels there; ms taken, or None.

    Call it on a thread that then exits: PyTorch keeps a cuBLAS handle (and its workspace) per thread and GPU, and a
    finished thread's handle goes back to a pool that the host's device thread takes it from later. The kernels
    are the kinds every zoo model runs (a matrix product, layer norm, softmax, GELU, an embedding lookup, a
    convolution); CUDA loads a kernel on its first launch in a process. It uses no random generator: a
    registration may be using one. The allocator's cached blocks are given back afterwards. Nothing is done
    without CUDA; a failure is said and leaves the standby cold.
    """
    start = time.perf_counter()
    try:
        import torch
        import torch.nn.functional as F

        if not torch.cuda.is_available():
            return None
        device = torch.device("cuda", index)
        with torch.cuda.device(device):
            a = torch.linspace(-1.0, 1.0, 64 * 64, device=device).view(64, 64)
            b = F.gelu(F.layer_norm(a @ a, (64,))).softmax(-1)
            F.embedding(torch.zeros(4, dtype=torch.long, device=device), b)
            F.conv2d(b.view(1, 1, 64, 64), torch.ones(1, 1, 3, 3, device=device))
            torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    except Exception as exc:  # a woken standby still serves: its first registration creates the context then
        print(f"deepplan standby (pid {os.getpid()}): priming GPU {index} failed: {exc}", flush=True)
        return None
    ms = (time.perf_counter() - start) * 1e3
    print(f"deepplan standby (pid {os.getpid()}): primed GPU {index} in {ms:.0f} ms", flush=True)
    return ms


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(0)


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a standby this host started (its normal exit: no host left to stand by for)."""
    if process is not None and process.poll() is None:
        with contextlib.suppress(OSError):
            process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=2.0)
