"""Experiment drivers: start the real server with N deepplan instances, run Locust headless, collect, plot.

- :mod:`loadtest.experiments.sweep`: the paper's Fig. 12/13 flow (instance-count sweep, synthetic workload);
- :mod:`loadtest.experiments.trace_replay`: the Fig. 14 flow (Azure Functions trace, a mix of models);
- :mod:`loadtest.experiments.host_death`: one engine host killed under load, and how the server recovers.

This module holds what both share: engine variants, the model repository of one point, one server start
through :class:`deepplan_backend.serve.TritonServer` that waits until *every* model is ready, one Locust run
(a subprocess, open loop), and the CSV / JSON writer.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from deepplan_backend.runtime.residency import scratch_state_dir

if TYPE_CHECKING:
    from deepplan_backend import serve

REPO_ROOT = Path(__file__).resolve().parents[2]

ENGINES: dict[str, tuple[str, bool]] = {
    "pipeline": ("pipeline", False),  # PipeSwitch-style pipelined load, target GPU only, eager as PipeSwitch runs
    "deepplan": ("deepplan", False),  # DeepPlan (DHA + pipeline), target GPU only
    "deepplan+pt": ("deepplan", True),  # DeepPlan with parallel transmission over peer GPUs (devices auto)
}
"""Engine variant -> (backend ``engine`` parameter, uses peer GPUs). The DeepPlan variants take the backend's
default execution (CUDA graphs on GPU); the PipeSwitch baseline runs eager (``graphs false``) unless a
``--param graphs=...`` says otherwise."""

COLUMNS = (
    "engine",
    "instances",
    "models",
    "rate",
    "slo_ms",
    "requests",
    "errors",
    "p50_ms",
    "p99_ms",
    "goodput_pct",
    "cold_start_pct",
    "cold_starts",
    "warmup_s",
    "p99_steady_ms",
    "goodput_steady_pct",
    "cold_start_steady_pct",
    "throughput_rps",
    "achieved_rate_rps",
    "budget",
    "gpu_name",
    "num_gpus",
    "server_ready_s",
    "models_ready_s",
    "results_dir",
    "error",
    "date",
)

T0 = time.monotonic()


def say(msg: str) -> None:
    """Progress line with the time since start."""
    print(f"[experiments {time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def now_iso() -> str:
    """UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def parse_engines(names: Sequence[str]) -> list[str]:
    """Check engine variant names (case-insensitive, ``deepplan-pt`` accepted); keeps the order."""
    out = []
    for name in names:
        key = name.lower().replace("-pt", "+pt").replace("_pt", "+pt")
        if key not in ENGINES:
            raise ValueError(f"engine {name!r}: choose from {', '.join(ENGINES)}")
        out.append(key)
    return out


# ---- devices -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Devices:
    """GPUs the instances are spread over (empty: CPU), and what the rows report."""

    gpu_ids: tuple[int, ...]
    gpu_name: str
    all_gpus: bool  # every visible GPU is used: PT may use ``devices auto``

    @property
    def where(self) -> str:
        """What the drivers' lines and titles say: ``4 x NVIDIA H200`` or ``CPU``."""
        return f"{len(self.gpu_ids)} x {self.gpu_name}" if self.gpu_ids else "CPU"


def resolve_devices(spec: str) -> Devices:
    """``auto``: every visible GPU (CPU when none); ``cpu``; or GPU ids ``0,1,2``."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "cpu" or (spec == "auto" and count == 0):
        return Devices((), "cpu", False)
    if spec == "auto":
        ids: tuple[int, ...] = tuple(range(count))
    else:
        try:
            ids = tuple(int(x) for x in spec.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"--devices {spec!r}: give auto, cpu or GPU ids like 0,1,2") from None
        bad = [i for i in ids if not 0 <= i < count]
        if not ids or bad:
            raise ValueError(f"--devices {spec!r}: {count} GPU(s) visible, ids {bad or 'missing'}")
    return Devices(ids, torch.cuda.get_device_name(ids[0]), len(ids) == count)


# ---- model repository --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """One Triton model of a point: its name and the zoo model it serves."""

    name: str
    model: str


def instance_names(models: Sequence[str], count: int) -> list[Instance]:
    """``count`` instances; instance i serves ``models[i % len(models)]`` and is named ``<model>-<i>``.

    With one model these are the names ``locust --model-prefix <model>- --instances N`` uses.
    """
    return [Instance(f"{models[i % len(models)]}-{i}", models[i % len(models)]) for i in range(count)]


def target_gpu(i: int, dev: Devices) -> int:
    """The GPU instance i is served on: round-robin over ``dev.gpu_ids`` (which must not be empty)."""
    return dev.gpu_ids[i % len(dev.gpu_ids)]


def device_param(variant: str, i: int, dev: Devices) -> str:
    """The backend's ``devices`` parameter of instance i: its target GPU, or target + peers for PT."""
    if not dev.gpu_ids:
        return "auto"  # CPU: the backend serves on the CPU
    target = target_gpu(i, dev)
    if not ENGINES[variant][1]:
        return str(target)
    if dev.all_gpus:
        return "auto"  # target + every GPU it has peer access to
    return ",".join(str(g) for g in [target, *[g for g in dev.gpu_ids if g != target]])


def build_repository(
    repo: Path,
    instances: Sequence[Instance],
    variant: str,
    dev: Devices,
    params: dict[str, str],
) -> None:
    """One deepplan model per instance, round-robin over the GPUs (parameter ``target_gpu``) or on the CPU.

    Front ends are ``KIND_CPU`` either way: with ``process: shared`` (the default) the GPU work runs in the
    target GPU's engine host, so the stubs hold no CUDA context.
    """
    from deepplan_backend.repository import config_pbtxt, family_of, write_model

    engine = ENGINES[variant][0]
    for i, inst in enumerate(instances):
        p = {"engine": engine, "devices": device_param(variant, i, dev), **params}
        if engine == "pipeline":
            p.setdefault("graphs", "false")
        if dev.gpu_ids:
            p.setdefault("target_gpu", str(target_gpu(i, dev)))
        if family_of(inst.model) == "resnet":
            p.pop("seq_len", None)  # image models have no sequence
        text = config_pbtxt(
            inst.name,
            inst.model,
            parameters=p,
            queue_delay_us=0,  # latency is measured: no artificial batching wait
        )
        write_model(repo, inst.name, text)


def allow_paths(*paths: Path) -> None:
    """Let the server's models use these folders (the backend's path policy; the server inherits the env)."""
    plans = str(paths[0].resolve())
    os.environ["DEEPPLAN_PLAN_REPOSITORY"] = plans
    roots = [r for r in os.environ.get("DEEPPLAN_ALLOWED_ROOTS", "").split(os.pathsep) if r]
    new = [str(p.resolve()) for p in paths]
    os.environ["DEEPPLAN_ALLOWED_ROOTS"] = os.pathsep.join([*new, *[r for r in roots if r not in new]])


# ---- one point: server + Locust ----------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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
    from deepplan_backend import serve

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


@dataclass
class PointResult:
    """What one point produced: the Locust summary (None on failure) and timings."""

    summary: dict[str, Any] | None
    results_dir: Path
    server_ready_s: float | None = None
    models_ready_s: float | None = None
    error: str = ""


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

    ``locust_args`` start with ``-f <locustfile>``; ``--headless``, ``--triton-url`` and ``--results-dir`` are
    added here. The server log goes to ``<results_dir>/server.log``, Locust's output to ``locust.log``.
    `during(server)` runs on its own thread from Locust's start (e.g. a fault injected under load); the point ends when
    both are done.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    res = PointResult(None, results_dir)
    log = (results_dir / "server.log").open("w")
    server, cfg = experiment_server(repo, log, ready_timeout_s)
    try:
        res.server_ready_s, res.models_ready_s = start_and_wait(server, cfg, names, ready_timeout_s)
        say(f"  server ready in {res.server_ready_s:.1f} s, all {len(names)} models in {res.models_ready_s:.1f} s")
        cmd = [
            sys.executable,
            "-m",
            "locust",
            *locust_args,
            "--headless",
            "--only-summary",
            "--triton-url",
            cfg.url("HTTP" if protocol == "http" else "gRPC"),
            "--results-dir",
            str(results_dir),
        ]
        say(f"  locust {' '.join(locust_args)}")
        with (results_dir / "locust.log").open("w") as out:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
            side = threading.Thread(target=during, args=(server,), name="during-load", daemon=True) if during else None
            if side is not None:
                side.start()
            try:
                proc.wait(timeout=locust_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
            finally:
                if side is not None:
                    side.join(timeout=locust_timeout_s)
        summary_path = results_dir / "summary.json"
        if not summary_path.is_file():
            tail = (results_dir / "locust.log").read_text()[-1500:]
            raise RuntimeError(f"locust exited with {proc.returncode} and no summary.json:\n{tail}")
        res.summary = json.loads(summary_path.read_text())
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


def summary_fields(summary: dict[str, Any] | None) -> dict[str, Any]:
    """The CSV columns that come from a point's summary (all None for a point without one)."""
    s = summary or {}
    steady = s.get("steady") or {}
    cold, steady_cold = s.get("cold_start_rate"), steady.get("cold_start_rate")
    return {
        "requests": s.get("requests"),
        "errors": s.get("errors"),
        "p50_ms": s.get("p50_ms"),
        "p99_ms": s.get("p99_ms"),
        "goodput_pct": s.get("goodput_pct"),
        "cold_start_pct": None if cold is None else 100.0 * cold,
        "cold_starts": s.get("cold_starts"),
        "warmup_s": steady.get("warmup_s"),
        "p99_steady_ms": steady.get("p99_ms"),
        "goodput_steady_pct": steady.get("goodput_pct"),
        "cold_start_steady_pct": None if steady_cold is None else 100.0 * steady_cold,
        "throughput_rps": s.get("throughput_rps"),
        "achieved_rate_rps": s.get("achieved_rate_rps"),
    }


def row_of(
    engine: str,
    instances: int,
    models: Sequence[str],
    rate: float,
    slo_ms: float,
    budget: str,
    dev: Devices,
    res: PointResult,
) -> dict[str, Any]:
    """One CSV row from a point's summary."""
    return {
        "engine": engine,
        "instances": instances,
        "models": "+".join(models),
        "rate": rate,
        "slo_ms": slo_ms,
        **summary_fields(res.summary),
        "budget": budget,
        "gpu_name": dev.gpu_name,
        "num_gpus": len(dev.gpu_ids),
        "server_ready_s": res.server_ready_s,
        "models_ready_s": res.models_ready_s,
        "results_dir": str(res.results_dir),
        "error": res.error.splitlines()[0] if res.error else "",
        "date": now_iso(),
    }


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else value


def write_rows(
    rows: Sequence[dict[str, Any]], csv_path: Path, doc: dict[str, Any], columns: Sequence[str] = COLUMNS
) -> tuple[Path, Path]:
    """``<name>.csv`` (`columns`, the load-test ones by default) and ``<name>.json`` (``doc`` plus the rows)."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
    json_path = csv_path.with_suffix(".json")
    json_path.write_text(json.dumps({**doc, "rows": list(rows)}, indent=2, default=str) + "\n")
    return csv_path, json_path


def point_env(out: Path) -> tuple[Path, tempfile.TemporaryDirectory[str], tempfile.TemporaryDirectory[str]]:
    """The plan repository (``<out>/plans``, shared by all points), a work folder, and one for residency folders.

    The residency folders go where a server keeps its own, in memory (`residency.scratch_state_dir`).
    """
    plans = out / "plans"
    plans.mkdir(parents=True, exist_ok=True)
    return plans, tempfile.TemporaryDirectory(prefix="deepplan-exp-"), scratch_state_dir("deepplan-exp-state-")


def default_seq_len(models: Sequence[str]) -> int:
    """16 when a tiny zoo model is involved (their position tables are short), else 384 (the paper's)."""
    return 16 if any(m.startswith("tiny-") for m in models) else 384


def model_params(args: Any, plans: Path, residency: Path) -> dict[str, str]:
    """The deepplan parameters every instance of a point shares (budget, plans, residency, --param)."""
    params = {"plan_repository": str(plans.resolve()), "residency_dir": str(residency.resolve())}
    if args.budget:
        params["budget"] = args.budget
    params["seq_len"] = str(args.seq_len)
    for pair in args.param:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        params[key] = value
    return params


def add_common_arguments(p: Any) -> None:
    """Options shared by both experiments."""
    p.add_argument("--rate", type=float, default=100.0, help="target request rate, req/s (default 100)")
    p.add_argument("--slo-ms", type=float, default=100.0, help="latency SLO for goodput, ms (default 100)")
    p.add_argument(
        "--engines",
        nargs="+",
        default=["pipeline", "deepplan", "deepplan+pt"],
        help=f"engine variants, of {', '.join(ENGINES)} (default all three)",
    )
    p.add_argument("--devices", default="auto", help="GPUs to spread instances over: auto (all; CPU if none), cpu, 0,1")
    p.add_argument("--budget", default="", help="per-device residency budget, e.g. 2GiB (default: device memory)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per text request (default 384; 16 for tiny-*)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="extra deepplan parameter")
    p.add_argument("--seed", type=int, default=0, help="arrival schedule seed (default 0)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="client protocol (default grpc)")
    p.add_argument("--drain-s", type=float, default=30.0, help="wait for stragglers after the last arrival")
    p.add_argument(
        "--warmup-s", type=float, default=0.0, help="leave the first seconds out of the steady-state columns"
    )
    p.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for all models (default 900)")
    p.add_argument("--out", type=Path, required=True, help="output folder")


def check_common(p: Any, args: Any, models: Sequence[str]) -> None:
    """Validate the shared options (``p.error`` exits with code 2)."""
    from deepplan_backend.runtime import zoo

    try:
        args.engines = parse_engines(args.engines)
    except ValueError as exc:
        p.error(f"--engines: {exc}")
    for m in models:
        if m not in zoo.ZOO:
            p.error(f"{m!r} is not a zoo model ({', '.join(zoo.ZOO)})")
    if args.rate <= 0 or args.slo_ms <= 0:
        p.error("--rate and --slo-ms must be > 0")
    if args.warmup_s < 0:
        p.error("--warmup-s must be >= 0")
    if args.budget:
        from deepplan_backend.runtime.served_model import parse_size

        try:
            parse_size(args.budget, "--budget")
        except Exception as exc:
            p.error(str(exc))
    if args.seq_len is None:
        args.seq_len = default_seq_len(models)
    for pair in args.param:
        if "=" not in pair:
            p.error(f"--param {pair!r}: expected KEY=VALUE")


def synthetic_point(
    args: Any, engine: str, count: int, dev: Devices, plans: Path, work: Path, residency: Path
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


def locust_common(args: Any) -> list[str]:
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
