"""One experiment point: its folders, its repository and Locust options, and the run of server + Locust."""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepplan_backend.runtime.residency import scratch_state_dir

from .devices import Devices
from .progress import say
from .repository import build_repository, instance_names, model_params
from .server import allow_paths, experiment_server, start_and_wait

if TYPE_CHECKING:
    from deepplan_backend import serve

REPO_ROOT = Path(__file__).resolve().parents[2]


def point_env(out: Path) -> tuple[Path, tempfile.TemporaryDirectory[str], tempfile.TemporaryDirectory[str]]:
    """The plan repository (``<out>/plans``, shared by all points), a work folder, and one for residency folders.

    The residency folders go where a server keeps its own, in memory (`residency.scratch_state_dir`).
    """
    plans = out / "plans"
    plans.mkdir(parents=True, exist_ok=True)
    return plans, tempfile.TemporaryDirectory(prefix="deepplan-exp-"), scratch_state_dir("deepplan-exp-state-")


def locust_common(args: argparse.Namespace) -> list[str]:
    """Locust options both experiments pass."""
    return [
        "--rate",
        str(args.rate),
        "--slo-ms",
        str(args.slo_ms),
        "--seed",
        str(args.seed),
        "--seq-len",
        str(args.seq_len),
        "--protocol",
        args.protocol,
        "--drain-s",
        str(args.drain_s),
        "--warmup-s",
        str(args.warmup_s),
    ]


def synthetic_point(
    args: argparse.Namespace, engine: str, count: int, dev: Devices, plans: Path, work: Path, residency: Path
) -> tuple[Path, list[str], list[str]]:
    """One point of ``args.model`` x `count` under the synthetic workload: (repository, model names, Locust args).

    The repository goes to ``<work>/repo``; `residency` (created) is the point's own residency folder.
    """
    residency.mkdir(parents=True)
    allow_paths(plans, residency)
    instances = instance_names([args.model], count)
    repo = work / "repo"
    build_repository(repo, instances, engine, dev, model_params(args, plans, residency))
    locust_args = [
        *("-f", "loadtest/synthetic.py", "--model-prefix", f"{args.model}-", "--instances", str(count)),
        *("--duration-s", str(args.duration_s), *locust_common(args)),
    ]
    return repo, [i.name for i in instances], locust_args


@dataclass
class PointResult:
    """What one point produced: the Locust summary (None on failure) and timings."""

    summary: dict[str, Any] | None
    results_dir: Path
    server_ready_s: float | None = None
    models_ready_s: float | None = None
    error: str = ""


def run_locust(
    locust_args: Sequence[str],
    triton_url: str,
    results_dir: Path,
    timeout_s: float,
    during: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Locust headless against `triton_url` as a subprocess, output in ``<results_dir>/locust.log``; its summary.

    ``locust_args`` start with ``-f <locustfile>``; ``--headless``, ``--triton-url`` and ``--results-dir`` are
    added here. `during()` runs on its own thread from Locust's start; this returns when both are done.

    Raises:
        subprocess.TimeoutExpired: Locust ran past `timeout_s` (it is killed).
        RuntimeError: Locust exited without writing ``summary.json``.
    """
    cmd = [
        sys.executable,
        "-m",
        "locust",
        *locust_args,
        "--headless",
        "--only-summary",
        "--triton-url",
        triton_url,
        "--results-dir",
        str(results_dir),
    ]
    say(f"  locust {' '.join(locust_args)}")
    with (results_dir / "locust.log").open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        side = threading.Thread(target=during, name="during-load", daemon=True) if during else None
        if side is not None:
            side.start()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            if side is not None:
                side.join(timeout=timeout_s)
    summary_path = results_dir / "summary.json"
    if not summary_path.is_file():
        tail = (results_dir / "locust.log").read_text()[-1500:]
        raise RuntimeError(f"locust exited with {proc.returncode} and no summary.json:\n{tail}")
    return json.loads(summary_path.read_text())


def run_point(
    repo: Path,
    names: Sequence[str],
    locust_args: Sequence[str],
    results_dir: Path,
    *,
    ready_timeout_s: float,
    locust_timeout_s: float,
    protocol: str = "grpc",
    during: Callable[[serve.TritonServer], None] | None = None,
) -> PointResult:
    """Start the server on ``repo``, wait for all ``names``, run Locust with ``locust_args``, stop the server.

    ``locust_args`` are `run_locust`'s. The server log goes to ``<results_dir>/server.log``, Locust's output to
    ``locust.log``. `during(server)` runs on its own thread from Locust's start (e.g. a fault injected under load);
    the point ends when both are done.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    res = PointResult(None, results_dir)
    log = (results_dir / "server.log").open("w")
    server, cfg = experiment_server(repo, log, ready_timeout_s)
    try:
        res.server_ready_s, res.models_ready_s = start_and_wait(server, cfg, names, ready_timeout_s)
        say(f"  server ready in {res.server_ready_s:.1f} s, all {len(names)} models in {res.models_ready_s:.1f} s")
        url = cfg.url("HTTP" if protocol == "http" else "gRPC")
        side = functools.partial(during, server) if during else None
        res.summary = run_locust(locust_args, url, results_dir, locust_timeout_s, side)
    except Exception as exc:  # recorded in the row; the sweep goes on with the next point
        res.error = f"{type(exc).__name__}: {exc}".strip()
        say(f"  FAILED: {res.error[:2000]}")
    finally:
        if server.pid is not None:
            code = server.stop()
            say(f"  tritonserver stopped (exit code {code})")
            server.wait_output_closed()  # a lingering engine host's last lines go in the log
        log.close()
    return res
