"""Launching the real ``tritonserver`` for a measurement: ports, the backend's path policy, readiness of every model.

Shared by the experiments and the Triton benchmarks (`benchmark.triton_coldstart`, `benchmark.triton_scale`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from deepplan_backend import serve

from .progress import say


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (held open together, then released)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((serve.LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def allow_paths(plans: Path, *others: Path) -> None:
    """Let the server's models use this plan repository and these folders (e.g. residency state).

    The backend confines a model's path parameters to its model repository, the server's plan repository
    (``$DEEPPLAN_PLAN_REPOSITORY``) and ``$DEEPPLAN_ALLOWED_ROOTS``; the server inherits this environment.
    """
    os.environ["DEEPPLAN_PLAN_REPOSITORY"] = str(plans.resolve())
    roots = [r for r in os.environ.get("DEEPPLAN_ALLOWED_ROOTS", "").split(os.pathsep) if r]
    new = [str(p.resolve()) for p in (plans, *others)]
    os.environ["DEEPPLAN_ALLOWED_ROOTS"] = os.pathsep.join([*new, *[r for r in roots if r not in new]])


def model_ready(http_url: str, name: str) -> bool:
    """``GET /v2/models/<name>/ready`` answered 200."""
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/models/{name}/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_models_ready(
    http_url: str, names: Sequence[str], timeout_s: float, alive: Callable[[], bool], every_s: float = 10.0
) -> None:
    """Poll every model's readiness until all are ready (models load in parallel at start).

    Raises:
        RuntimeError: the server exited, or some models were not ready within ``timeout_s``.
    """
    pending = list(names)
    t0 = next_report = time.monotonic()
    while pending:
        pending = [n for n in pending if not model_ready(http_url, n)]
        if not pending:
            break
        if not alive():
            raise RuntimeError(f"tritonserver exited with {len(pending)} model(s) not ready")
        elapsed = time.monotonic() - t0
        if elapsed > timeout_s:
            raise RuntimeError(
                f"{len(pending)} of {len(names)} models not ready after {timeout_s:.0f} s: {pending[:5]}"
            )
        if time.monotonic() >= next_report:
            say(f"  {len(names) - len(pending)}/{len(names)} models ready ({elapsed:.0f} s)")
            next_report += every_s
        time.sleep(0.5)


def experiment_server(repo: Path, log: IO[str], ready_timeout_s: float) -> tuple[serve.TritonServer, serve.ServeConfig]:
    """The real ``tritonserver`` of one experiment point, not started.

    Free loopback ports, a fresh admin token, its log written to `log`.
    """
    http, grpc, metrics = free_ports(3)
    cfg = serve.ServeConfig(
        admin_token=secrets.token_urlsafe(16),
        model_repository=repo,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        ready_timeout_s=ready_timeout_s,
        grace_s=30.0,
    )

    def sink(line: str) -> None:
        with contextlib.suppress(ValueError):  # closed: a host lingered past HOST_OUTPUT_WAIT_S, its last lines lost
            log.write(line)

    return serve.TritonServer(cfg, log_sink=sink), cfg


def start_and_wait(
    server: serve.TritonServer, cfg: serve.ServeConfig, names: Sequence[str], ready_timeout_s: float
) -> tuple[float, float]:
    """Start `server` and wait until it and every model in `names` are ready: (server ready s, models ready s)."""
    t0 = time.monotonic()
    server.start()
    server.wait_ready(progress=lambda m: say(f"  {m}"), every_s=15.0)
    server_ready_s = time.monotonic() - t0
    wait_models_ready(cfg.url("HTTP"), names, ready_timeout_s, lambda: server.poll() is None)
    return server_ready_s, time.monotonic() - t0
