"""Start the real tritonserver for a test, through the same code path as ``python3 -m deepplan_backend serve``.

Usage in a test module::

    from deepplan_backend.repository import write_model
    from tests.triton_server import running_triton

    @pytest.fixture(scope="module")
    def triton(tmp_path_factory):
        repo = tmp_path_factory.mktemp("repo")
        write_model(repo, "double", CONFIG_PBTXT)  # config.pbtxt + empty version folder 1/
        with running_triton(repo, backend_source=my_backend_dir) as server:
            yield server  # server.http_url, server.grpc_url, server.token, server.http_headers, ...

Ports are picked free at start; the backends folder is built under a temporary cache directory unless one
is given. ``backend_source`` is the folder holding the deepplan backend's ``model.py`` (default: the package),
so a test can serve a throwaway ``backend: "deepplan"`` implementation.
"""

from __future__ import annotations

import secrets
import socket
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from deepplan_backend import install, serve


@dataclass(frozen=True)
class RunningTriton:
    """A ready server; URLs are ``host:port`` as tritonclient takes them (no scheme)."""

    http_url: str
    grpc_url: str
    metrics_url: str
    token: str
    server: serve.TritonServer

    @property
    def http_headers(self) -> dict[str, str]:
        """Headers that unlock the model-repository API over HTTP."""
        return {serve.ADMIN_HEADER_KEY: self.token}

    @property
    def grpc_headers(self) -> dict[str, str]:
        """Metadata that unlocks the model-repository API over gRPC."""
        return {serve.GRPC_ADMIN_HEADER_KEY: self.token}

    def log(self) -> str:
        """The server's recent log lines (for assertion messages)."""
        return self.server.log_tail()


def free_ports(n: int, host: str = serve.LOOPBACK) -> list[int]:
    """``n`` distinct ports the kernel reports free right now (all held open together, then released)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


@contextmanager
def running_triton(
    model_repository: Path,
    *,
    backend_source: Path = install.SOURCE_DIR,
    cache_dir: Path | None = None,
    token: str | None = None,
    ready_timeout_s: float = 60.0,
    grace_s: float = 10.0,
    log_verbose: int = 0,
    extra_args: tuple[str, ...] = (),
    echo: bool = False,
) -> Iterator[RunningTriton]:
    """Start tritonserver on free loopback ports, wait until ready, yield it, and stop it.

    Args:
        model_repository: the repository (every model in it is loaded at start).
        backend_source: folder with the deepplan backend files (``model.py``).
        cache_dir: where the backends folder is built; a temporary folder by default.
        token: admin token; a random one by default.
        ready_timeout_s: how long to wait for readiness before failing.
        grace_s: how long a stop may take before the server is killed.
        log_verbose: tritonserver ``--log-verbose``.
        extra_args: further tritonserver flags.
        echo: also print the server log (pytest shows it for failing tests); it is always kept in memory.

    Raises:
        deepplan_backend.serve.ServeError: the server did not start (message holds the log tail).
    """

    def sink(line: str) -> None:  # the server keeps its own log tail; this only decides about echoing
        if echo:
            print(line, end="")

    with ExitStack() as stack:
        if cache_dir is None:
            cache_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deepplan-cache-")))
        http, grpc, metrics = free_ports(3)
        cfg = serve.ServeConfig(
            admin_token=token or secrets.token_urlsafe(16),
            model_repository=model_repository,
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
            backend_source=backend_source,
            cache_dir=cache_dir,
            ready_timeout_s=ready_timeout_s,
            grace_s=grace_s,
            log_verbose=log_verbose,
            extra_args=extra_args,
        )
        server = serve.TritonServer(cfg, log_sink=sink)
        server.start()
        try:
            server.wait_ready()
            yield RunningTriton(
                http_url=cfg.url("HTTP"),
                grpc_url=cfg.url("gRPC"),
                metrics_url=cfg.url("metrics"),
                token=cfg.admin_token,
                server=server,
            )
        finally:
            server.stop()
