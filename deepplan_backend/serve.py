"""Embedded launch of the real ``tritonserver`` from the ``nvidia-pytriton`` wheel, with the deepplan backend.

``python3 -m deepplan_backend serve`` (or just ``python3 -m deepplan_backend``):

1. checks that the HTTP / gRPC / metrics ports are free (by binding them) and fails with a clear message;
2. builds a backends folder in a cache directory (:func:`deepplan_backend.install.prepare_backends_dir`);
3. starts ``tritonserver`` with ``--model-control-mode=explicit --load-model=*`` (every model of the
   repository loads at start, and the model-control API stays usable), bound to 127.0.0.1 by default;
4. restricts the model-repository API (load / unload / index) to requests carrying the admin token;
5. waits for ``/v2/health/ready``, streams the server log, and on Ctrl-C / SIGTERM forwards one signal,
   waits a grace period, then kills the server's process group.

:class:`TritonServer` and :func:`launch` are the code path shared with the test fixture
(``tests/triton_server.py``); :func:`serve` adds the banner, signal handling and exit codes of the CLI.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import errno
import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from deepplan_backend import install
from deepplan_backend.runtime.residency import STATE_DIR_ENV, remove_unused_state_dir, server_state_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "model_repository"
LOOPBACK = "127.0.0.1"
HOST_OUTPUT_WAIT_S = 10.0
"""How long a caller that closes its log sink waits, after the server's exit, for engine hosts that still print to the
server's output: they linger for `engine_host.LINGER_S` after their last model, then say they exit."""

ADMIN_TOKEN_ENV = "DEEPPLAN_ADMIN_TOKEN"
"""Environment variable holding the model-repository API token; a random one is generated when unset."""
CACHE_DIR_ENV = "DEEPPLAN_CACHE_DIR"
"""Environment variable overriding where the backends folder is built (default ``~/.cache/deepplan-triton``)."""

ADMIN_HEADER_KEY = "deepplan-key"
"""HTTP header carrying the admin token for the model-repository API (``deepplan-key: <token>``)."""
GRPC_ADMIN_HEADER_KEY = f"triton-grpc-protocol-{ADMIN_HEADER_KEY}"
"""gRPC metadata key for the same token: tritonserver prefixes restricted gRPC keys with this string."""
RESTRICTED_CATEGORY = "model-repository"
"""The one API category behind the token; inference, health, metadata and metrics stay open."""

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.~-]+$")  # no ':', '=' or ',' (flag syntax) and no whitespace
_LOG = "[deepplan]"
_ERROR_LINE = re.compile(r"^E\d{4} ")  # tritonserver's error lines: "E1127 05:57:55.870424 <pid> file.cc:621] ..."
# Printed on every machine without a CUDA driver; it does not stop the server, so it explains nothing.
_CPU_ONLY_NOISE = ("CudaDriverHelper has not been initialized",)


class ServeError(RuntimeError):
    """The server could not be started or stopped as asked; the message says why and what to do."""


class PortInUseError(ServeError):
    """A port the server needs is already taken by another process."""


class ServerExitedError(ServeError):
    """``tritonserver`` exited before it became ready (its last log lines are in the message)."""


class ReadyTimeoutError(ServeError):
    """``tritonserver`` was still not ready when the timeout expired."""


def default_cache_dir() -> Path:
    """``$DEEPPLAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/deepplan-triton``, else ``~/.cache/deepplan-triton``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "deepplan-triton"


def resolve_admin_token(env: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """Return ``(token, generated)``: ``$DEEPPLAN_ADMIN_TOKEN`` if set, else a fresh random token."""
    env = os.environ if env is None else env
    token = env.get(ADMIN_TOKEN_ENV, "")
    if token:
        return token, False
    return secrets.token_urlsafe(24), True


@dataclass(frozen=True)
class ServeConfig:
    """Everything one server start needs; validated on construction.

    Attributes:
        admin_token: value of the ``deepplan-key`` header that unlocks the model-repository API.
        model_repository: Triton ``--model-repository``.
        host: address HTTP, gRPC and metrics bind to; loopback unless set explicitly.
        http_port / grpc_port / metrics_port: the three listening ports.
        load_models: ``--load-model`` values; ``("*",)`` loads every model of the repository at start.
        backend_source: folder the files of :data:`install.BACKEND_FILES` are copied from.
        cache_dir: where the backends folder is built.
        ready_timeout_s: how long to wait for ``/v2/health/ready``.
        grace_s: after the stop signal, how long to wait before killing the server.
        log_verbose: ``--log-verbose`` (0 = info level only).
        extra_args: further ``tritonserver`` flags, passed last and unchecked.
    """

    admin_token: str
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    host: str = LOOPBACK
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    load_models: tuple[str, ...] = ("*",)
    backend_source: Path = install.SOURCE_DIR
    cache_dir: Path = field(default_factory=default_cache_dir)
    ready_timeout_s: float = 120.0
    grace_s: float = 30.0
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _TOKEN_RE.match(self.admin_token):
            raise ServeError(
                f"the admin token (from {ADMIN_TOKEN_ENV} or generated) may only hold letters, digits and "
                "'_.~-': tritonserver parses ':', '=' and ',' in --http-restricted-api"
            )
        ports = {"HTTP": self.http_port, "gRPC": self.grpc_port, "metrics": self.metrics_port}
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ServeError(f"the {name} port must be in 1..65535, got {port}")
        if len(set(ports.values())) != len(ports):
            raise ServeError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")
        if not Path(self.model_repository).is_dir():
            raise ServeError(f"model repository {self.model_repository} is not a folder; pass --model-repository DIR")
        if "*" in self.load_models and len(self.load_models) > 1:
            raise ServeError("--load-model '*' cannot be combined with model names (tritonserver refuses it)")
        if self.ready_timeout_s <= 0 or self.grace_s < 0:
            raise ServeError("ready timeout must be > 0 and grace period >= 0")

    @property
    def ports(self) -> dict[str, int]:
        """The listening ports by service name, in the order they are checked."""
        return {"HTTP": self.http_port, "gRPC": self.grpc_port, "metrics": self.metrics_port}

    @property
    def client_host(self) -> str:
        """Where a client on this machine connects: loopback when bound to every interface."""
        return {"0.0.0.0": LOOPBACK, "": LOOPBACK, "::": "::1"}.get(self.host, self.host)

    def url(self, service: str) -> str:
        """``host:port`` of ``service`` (``"HTTP"``, ``"gRPC"``, ``"metrics"``), as tritonclient takes it."""
        host = f"[{self.client_host}]" if ":" in self.client_host else self.client_host
        return f"{host}:{self.ports[service]}"


def check_ports_free(host: str, ports: Mapping[str, int]) -> None:
    """Bind every port on ``host`` once and release it; raise :class:`PortInUseError` on the first taken.

    ``SO_REUSEADDR`` is set like servers do, so sockets in TIME_WAIT from a server that just stopped do not
    count as taken, while a listening socket does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for service, port in ports.items():
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise ServeError(f"cannot bind {host}:{port} for {service}: {exc}") from exc
                flag = {"HTTP": "--http-port", "gRPC": "--grpc-port", "metrics": "--metrics-port"}[service]
                raise PortInUseError(
                    f"port {port} ({service}) on {host} is already in use"
                    + (" or needs privileges" if exc.errno == errno.EACCES else "")
                    + f"; stop the process holding it (e.g. `ss -ltnp 'sport = :{port}'`) "
                    f"or choose another port with {flag}"
                ) from exc


def backends_dir_for(cache_dir: Path, backend_source: Path) -> Path:
    """Backends folder for one (Python version, backend source) pair, so checkouts never overwrite each other."""
    key = hashlib.sha1(str(Path(backend_source).resolve()).encode()).hexdigest()[:10]
    return Path(cache_dir) / "backends" / f"py{install.current_python_version()}-{key}"


def _libpython_dir() -> Path | None:
    """Folder of this interpreter's shared ``libpythonX.Y.so``, if it has one."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        return Path(libdir)
    return None


def server_env(dist: install.TritonDist, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ``tritonserver`` and the Python backend stubs it spawns.

    The stub embeds Python in *isolated* mode, so ``PYTHONPATH`` and user site-packages are ignored inside
    it. What it does honour: it finds its ``sys.executable`` by looking up ``python3`` on ``PATH``, and a
    ``pyvenv.cfg`` next to that executable adds the venv's site-packages. Hence:

    - ``PATH`` starts with this interpreter's ``bin`` folder (the venv), so torch etc. import in the stub;
    - ``LD_LIBRARY_PATH`` starts with this interpreter's ``libpython`` folder (the stub otherwise links the
      system ``libpython3.X``, a different patch release than the venv's stdlib), then
      ``nvidia_pytriton.libs`` (the copied stub and ``libtriton_python.so`` have wheel-relative RPATHs);
    - ``PYTHONPATH`` gets the repository root for ordinary child processes; the stub reaches the checkout
      through its ``sys.path[0] == ''``, the server's working directory (see :meth:`TritonServer.start`).
    """
    env = dict(os.environ if base is None else base)

    def prepend(name: str, *paths: Path | None) -> None:
        parts = [str(p) for p in paths if p is not None]
        if env.get(name):
            parts.append(env[name])
        env[name] = os.pathsep.join(parts)

    prepend("PATH", Path(sys.executable).parent)
    prepend("LD_LIBRARY_PATH", _libpython_dir(), dist.libs)
    prepend("PYTHONPATH", REPO_ROOT)
    return env


def _shm_prefix() -> str:
    """A shared-memory name prefix unique to this launch.

    Every Python backend instance creates ``/dev/shm/<prefix><n>`` with ``n`` counting from 1 in each
    server, so two servers on one machine with the default prefix would open each other's regions.
    """
    return f"deepplan-{os.getpid()}-{secrets.token_hex(4)}-"


def server_command(
    cfg: ServeConfig, dist: install.TritonDist, backends_dir: Path, *, shm_prefix: str | None = None
) -> list[str]:
    """The ``tritonserver`` command line for ``cfg`` (flags checked against tritonserver 2.41 ``--help``)."""
    restricted = f"{RESTRICTED_CATEGORY}:{ADMIN_HEADER_KEY}={cfg.admin_token}"
    cmd = [
        str(dist.server),
        f"--model-repository={Path(cfg.model_repository).resolve()}",
        f"--backend-directory={backends_dir}",
        f"--cache-directory={dist.caches}",
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in cfg.load_models),
        f"--http-address={cfg.host}",
        f"--http-port={cfg.http_port}",
        f"--grpc-address={cfg.host}",
        f"--grpc-port={cfg.grpc_port}",
        f"--metrics-address={cfg.host}",
        f"--metrics-port={cfg.metrics_port}",
        f"--http-restricted-api={restricted}",
        # The gRPC flag is named "protocol", not "api", and expects the key with a prefix (see above).
        f"--grpc-restricted-protocol={restricted}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix or _shm_prefix()}",
        f"--exit-timeout-secs={max(1, int(cfg.grace_s))}",
        # Loading a model starts a stub process: with the default 4 threads, 200 models load 4 at a time.
        f"--model-load-thread-count={max(4, os.cpu_count() or 4)}",
        f"--log-verbose={cfg.log_verbose}",
    ]
    return cmd + list(cfg.extra_args)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the launcher dies, so no orphan server keeps the ports."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:  # not glibc Linux: nothing to do
        pass


LogSink = Callable[[str], None]


def _write_to(stream: IO[str]) -> LogSink:
    def sink(line: str) -> None:
        stream.write(line)
        stream.flush()

    return sink


class TritonServer:
    """One ``tritonserver`` process: start, wait until ready, stream its log, stop it.

    The server runs in its own session (process group): a Ctrl-C in the terminal reaches only the launcher,
    which forwards exactly one signal; a kill after the grace period takes the stub processes along.
    """

    def __init__(self, cfg: ServeConfig, *, log_sink: LogSink | None = None, tail_lines: int = 200) -> None:
        self.cfg = cfg
        self._sink = log_sink if log_sink is not None else _write_to(sys.stdout)
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._errors: collections.deque[str] = collections.deque(maxlen=20)
        self._proc: subprocess.Popen[bytes] | None = None
        self.shm_prefix = ""  # this launch's Python-backend shared-memory prefix (set by start)
        self._reader: threading.Thread | None = None
        self._stop_requested_at: float | None = None
        self.backends_dir: Path | None = None

    @property
    def pid(self) -> int | None:
        """Process id of ``tritonserver`` once started."""
        return self._proc.pid if self._proc else None

    @property
    def stopping(self) -> bool:
        """Whether a stop signal has been sent."""
        return self._stop_requested_at is not None

    def log_tail(self) -> str:
        """The last lines the server printed."""
        return "".join(self._tail)

    def error_lines(self) -> list[str]:
        """The server's recent error-level log lines (first line of each), without CPU-only noise."""
        return list(self._errors)

    def poll(self) -> int | None:
        """Exit code of the server, or ``None`` while it runs (or before start)."""
        return self._proc.poll() if self._proc else None

    def start(self) -> None:
        """Check ports, build the backends folder, and start ``tritonserver`` (does not wait for ready)."""
        if self._proc is not None:
            raise ServeError("this TritonServer was already started")
        check_ports_free(self.cfg.host, self.cfg.ports)
        dist = install.find_triton_dist()
        self.backends_dir = install.prepare_backends_dir(
            backends_dir_for(self.cfg.cache_dir, self.cfg.backend_source),
            source_dir=self.cfg.backend_source,
            dist=dist,
        )
        if self.stopping:  # a Ctrl-C while the backends folder was being built
            raise ServeError("stop requested before tritonserver was started")
        self.shm_prefix = _shm_prefix()
        self._proc = subprocess.Popen(
            server_command(self.cfg, dist, self.backends_dir, shm_prefix=self.shm_prefix),
            env=server_env(dist),
            cwd=REPO_ROOT,  # the stub's sys.path[0] is '' = this folder: `import deepplan_backend` works
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self._reader = threading.Thread(target=self._pump_log, name="tritonserver-log", daemon=True)
        self._reader.start()

    def _pump_log(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", errors="replace")
            self._tail.append(line)
            if _ERROR_LINE.match(line) and not any(n in line for n in _CPU_ONLY_NOISE):
                self._errors.append(line)
            self._sink(line)

    def wait_output_closed(self, timeout_s: float = HOST_OUTPUT_WAIT_S) -> bool:
        """Wait until nothing can print to the server's log any more; whether that happened within `timeout_s`.

        Engine hosts inherit the server's output and may outlive it by their linger time (their last lines, e.g.
        ``... exiting``, come after the server's exit): a caller that closes its log sink waits for them first.
        """
        if self._reader is None:
            return True
        self._reader.join(timeout=timeout_s)
        return not self._reader.is_alive()

    def is_ready(self) -> bool:
        """One ``GET /v2/health/ready``; ``False`` on any connection error."""
        try:
            with urllib.request.urlopen(f"http://{self.cfg.url('HTTP')}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, *, progress: LogSink | None = None, every_s: float = 5.0) -> bool:
        """Poll readiness until ready (``True``), a stop was requested (``False``), exit or timeout (raise).

        Raises:
            ServerExitedError: the server exited first; the message carries its last log lines.
            ReadyTimeoutError: not ready within ``cfg.ready_timeout_s``.
        """
        if self._proc is None:
            raise ServeError("wait_ready() before start()")
        t0 = next_report = time.monotonic()
        while True:
            if self.stopping:
                return False
            if self.is_ready():
                return True
            code = self._proc.poll()
            if code is not None:
                if self._reader:
                    self._reader.join(timeout=2)  # the last lines usually say why
                last = next((line for line in reversed(self._tail) if line.strip()), "(no output)")
                raise ServerExitedError(
                    f"tritonserver exited with code {code} before it was ready (full log above):\n"
                    + "".join(f"  {line}" for line in [*self._errors, last])
                )
            elapsed = time.monotonic() - t0
            if elapsed > self.cfg.ready_timeout_s:
                raise ReadyTimeoutError(
                    f"tritonserver not ready after {self.cfg.ready_timeout_s:.0f} s (see its log above); "
                    "a slow model load may need a longer --ready-timeout"
                )
            if progress and time.monotonic() >= next_report:
                if elapsed >= 1:
                    limit = self.cfg.ready_timeout_s
                    progress(f"waiting for tritonserver to be ready: {elapsed:.0f} s / {limit:.0f} s")
                next_report += every_s
            time.sleep(0.2)

    def request_stop(self, sig: int = signal.SIGINT) -> None:
        """Send ``sig`` to ``tritonserver`` once (it unloads models, then exits); later calls do nothing."""
        if self.stopping:
            return
        self._stop_requested_at = time.monotonic()  # before start(): start() will refuse
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the server's whole process group (server and its stub processes)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for exit, killing the group once the grace period after :meth:`request_stop` has run out.

        Returns:
            The exit code, or ``None`` if ``timeout`` expired first.
        """
        if self._proc is None:
            raise ServeError("wait() before start()")
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self._proc.poll()) is None:
            now = time.monotonic()
            if self._stop_requested_at is not None and now > self._stop_requested_at + self.cfg.grace_s:
                self.kill()
                self._proc.wait()
                break
            if deadline is not None and now > deadline:
                return None
            time.sleep(0.1)
        if self._reader:
            self._reader.join(timeout=2)
        self._remove_shm_regions()
        self._remove_residency_state()
        return self._proc.returncode if code is None else code

    def _remove_residency_state(self) -> None:
        """Delete this server's default residency folder and its engine hosts' files once unused.

        The folder is ``/dev/shm/deepplan-residency-<pid>``: its models' processes are gone with the server; an
        engine host still lingering for a few seconds has unregistered them. The host files are the spawn locks
        and dead sockets in ``$TMPDIR/deepplan-<uid>/`` (`host_client.remove_server_files`). A folder named by
        ``$DEEPPLAN_RESIDENCY_DIR`` is the user's and stays (servers given the same one share hosts), and so does
        one that still lists a live owner.
        """
        if self._proc is None or os.environ.get(STATE_DIR_ENV):
            return
        state_dir = server_state_dir(self._proc.pid)
        remove_unused_state_dir(state_dir)
        from deepplan_backend.hosting.host_client import HostError, remove_server_files

        with contextlib.suppress(HostError, OSError):  # a foreign socket folder: leave it to its owner
            remove_server_files(state_dir)

    def _remove_shm_regions(self) -> None:
        """Delete this launch's Python-backend regions left in /dev/shm (1 MiB or more each).

        A server that is killed (crash, kill -9, or killed after its grace period) leaves its stubs' regions
        behind; the unique prefix of this launch makes them safe to recognise once the server is gone.
        """
        prefix = self.shm_prefix
        if not prefix or not Path("/dev/shm").is_dir():
            return
        for region in Path("/dev/shm").glob(f"{prefix}*"):
            with contextlib.suppress(OSError):
                region.unlink()

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Request a stop and wait for the exit (killing after the grace period); return the exit code."""
        if self._proc is None:
            return 0
        self.request_stop(sig)
        code = self.wait()
        return 0 if code is None else code

    def __enter__(self) -> TritonServer:
        """Start the server (without waiting for readiness: call :meth:`wait_ready`)."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def describe_devices() -> str:
    """One line saying where models will run: the CUDA devices torch sees, or CPU."""
    try:
        import torch
    except ImportError:
        return "torch is not installed here: cannot tell the devices (the server itself does not need it)"
    if torch.cuda.is_available():
        names = ", ".join(f"{i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))
        return f"GPU: {torch.cuda.device_count()} CUDA device(s) [{names}]"
    return f"CPU only (torch {torch.__version__}, torch.cuda.is_available() is False)"


def _say(msg: str) -> None:
    print(f"{_LOG} {msg}", file=sys.stderr, flush=True)


def _banner(cfg: ServeConfig, token_generated: bool, devices: str) -> None:
    _say(f"ready: HTTP {cfg.url('HTTP')}  gRPC {cfg.url('gRPC')}  metrics http://{cfg.url('metrics')}/metrics")
    _say(f"model repository: {Path(cfg.model_repository).resolve()}")
    _say(f"devices: {devices}")
    where = "generated for this run" if token_generated else f"from {ADMIN_TOKEN_ENV}"
    shown = cfg.admin_token if token_generated else "(not shown)"
    _say(
        f"model-repository API token ({where}): {shown}\n"
        f"{_LOG}   send it as HTTP header '{ADMIN_HEADER_KEY}: <token>' or gRPC metadata "
        f"'{GRPC_ADMIN_HEADER_KEY}'; inference, health, metadata and metrics need none"
    )
    _say("press Ctrl-C to stop")


def serve(cfg: ServeConfig, *, token_generated: bool = False) -> int:
    """Run the server in the foreground until it exits or Ctrl-C / SIGTERM; return the process exit code.

    The first signal is forwarded to ``tritonserver`` (which unloads models and exits), a second one or the
    end of ``cfg.grace_s`` kills it.
    """
    if cfg.host not in (LOOPBACK, "localhost", "::1"):
        _say(
            f"WARNING: binding to {cfg.host}: inference, health and metadata are open to the network "
            "without authentication, and the admin token travels in clear text"
        )
    server = TritonServer(cfg)
    # Importing torch takes seconds: look at the devices while the server boots, not after.
    devices: list[str] = []
    probe = threading.Thread(target=lambda: devices.append(describe_devices()), daemon=True)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not server.stopping:
            _say(f"{signal.Signals(signum).name} received: stopping tritonserver (again to kill it)")
            server.request_stop(signal.SIGINT)
        else:
            _say("second signal: killing tritonserver")
            server.kill()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        probe.start()
        _say(f"started tritonserver (pid {server.pid}), backends in {server.backends_dir}")
        if server.wait_ready(progress=_say):
            probe.join()
            _banner(cfg, token_generated, devices[0] if devices else "unknown (device probe failed)")
        code = server.wait()
    except (ServeError, install.InstallError) as exc:
        server.stop()
        _say(f"error: {exc}")
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if server.stopping:
        _say(f"tritonserver stopped (exit code {code})")
        return 0 if code in (0, -signal.SIGINT) else 1
    _say(f"tritonserver exited on its own with code {code}")
    return code or 1


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python3 -m deepplan_backend serve``."""
    p = argparse.ArgumentParser(
        prog="python3 -m deepplan_backend serve",
        description="Start Triton (from the nvidia-pytriton wheel) with the deepplan backend. "
        "Arguments after '--' go to tritonserver unchanged.",
    )
    p.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY, help="default: %(default)s")
    p.add_argument(
        "--host",
        default=LOOPBACK,
        help="address to bind HTTP, gRPC and metrics to (default %(default)s; 0.0.0.0 exposes the server)",
    )
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument(
        "--load-model",
        action="append",
        dest="load_models",
        metavar="NAME",
        help="load only these models at start (repeatable; default: every model of the repository)",
    )
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds (default %(default)s)")
    p.add_argument("--grace-period", type=float, default=30.0, help="seconds before a stopping server is killed")
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument(
        "--cache-dir", type=Path, default=None, help=f"where the backends folder is built (${CACHE_DIR_ENV})"
    )
    p.add_argument(
        "--backend-source",
        type=Path,
        default=install.SOURCE_DIR,
        help="folder the deepplan backend files are copied from (default: this package)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python3 -m deepplan_backend serve``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(argv)
    token, generated = resolve_admin_token()
    try:
        cfg = ServeConfig(
            admin_token=token,
            model_repository=args.model_repository,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            load_models=tuple(args.load_models or ("*",)),
            backend_source=args.backend_source,
            cache_dir=args.cache_dir or default_cache_dir(),
            ready_timeout_s=args.ready_timeout,
            grace_s=args.grace_period,
            log_verbose=args.log_verbose,
            extra_args=tuple(extra),
        )
    except ServeError as exc:
        _say(f"error: {exc}")
        return 1
    return serve(cfg, token_generated=generated)


if __name__ == "__main__":
    sys.exit(main())
