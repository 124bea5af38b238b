r"""How many deepplan models one Triton server holds, and what each added model costs on the GPUs.

    python3 -m benchmark.triton_scale --model bert-base --points shared:4 shared:200 instance:4 instance:8 \
        --budget 2GiB --out results/scale

A point ``PROCESS:N`` starts the real ``tritonserver`` with N deepplan models of ``--model`` spread round-robin
over the GPUs (``process: shared``: engine hosts per GPU; ``instance``: each Triton stub does its own device
work), waits until all are ready, and records the GPUs' used memory (``nvidia-smi``) before the start, after
every model is loaded (nothing resident yet), and after one request to every model (resident models capped by
the per-GPU budget), plus the host memory of the server's processes (RSS by kind of process, and the sum of their
PSS, which counts a page shared by several processes once: a weights image mapped by every stub). Every answer
is compared with the plain model computed here. Per added model = (used after load at N2 - at N1) / (N2 - N1) for
two points of one process mode: device memory a model costs beyond its resident weights.

Outputs: ``<out>/scale.csv`` and ``.json`` (one row per point), ``<out>/scale.png`` (GPU memory against the
number of models, per process mode), each point's server log in ``<out>/<process>-n<N>.log``; a table at the
end. Exit code 0 when every point ran with all answers right. ``--plot SCALE.json`` redraws the figure of a
finished run beside its JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepplan_backend.runtime.residency import scratch_state_dir
from loadtest.experiments.progress import say
from loadtest.experiments.server import allow_paths, experiment_server, start_and_wait
from loadtest.experiments.table import now_iso, write_rows

COLUMNS = (
    "date",
    "model",
    "process",
    "instances",
    "gpus",
    "ready_s",
    "gpu_used_before_mib",
    "gpu_used_loaded_mib",
    "gpu_used_served_mib",
    "gpu_used_after_stop_mib",
    "gpu_mib_per_added_model",
    "server_rss_mib",
    "stubs",
    "stub_rss_mib_median",
    "stubs_rss_mib",
    "engine_hosts",
    "hosts_rss_mib",
    "standby_hosts",
    "standbys_rss_mib",
    "pss_total_mib",
    "answers",
    "errors",
    "wrong",
    "cold_starts",
    "cold_p50_ms",
    "error",
)


def gpu_used_mib() -> list[int] | None:
    """Used memory per GPU from ``nvidia-smi`` (no CUDA context in this process), or None without GPUs."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return None
    return [int(x) for x in out.stdout.split()]


def _rss_mib(pid: int) -> float:
    return _proc_mib(pid, "status", "VmRSS:")


def _pss_mib(pid: int) -> float:
    """The process's proportional set size: shared pages (a weights image, libraries) split between their users.

    The sum over a server's processes is the host memory they hold together; the RSS sum counts a page mapped by
    N processes N times.
    """
    return _proc_mib(pid, "smaps_rollup", "Pss:")


def _proc_mib(pid: int, file: str, field: str) -> float:
    """A kB field of ``/proc/<pid>/<file>`` in MiB; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_memory(server_pid: int) -> dict[str, float]:
    """Resident host memory (MiB) of the server, its stubs, its engine hosts and their standbys (`standby`)."""
    stubs = [int(p) for p in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()]
    from deepplan_backend.hosting.host_client import server_digest
    from deepplan_backend.hosting.standby import STANDBY_FLAG
    from deepplan_backend.runtime.residency import server_state_dir

    ours = server_digest(server_state_dir(server_pid))  # in every host's --socket, whatever its GPU
    processes = {
        int(p.name): cmd
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and "deepplan_backend.hosting.engine_host" in (cmd := _cmdline(int(p.name))) and ours in cmd
    }
    hosts = [pid for pid, cmd in processes.items() if STANDBY_FLAG not in cmd]
    standbys = [pid for pid, cmd in processes.items() if STANDBY_FLAG in cmd]
    stub_rss = [_rss_mib(p) for p in stubs]
    return {
        "server_rss_mib": _rss_mib(server_pid),
        "stubs": len(stubs),
        "stub_rss_mib_median": float(np.median(stub_rss)) if stub_rss else 0.0,
        "stubs_rss_mib": sum(stub_rss),
        "engine_hosts": len(hosts),
        "hosts_rss_mib": sum(_rss_mib(p) for p in hosts),
        "standby_hosts": len(standbys),
        "standbys_rss_mib": sum(_rss_mib(p) for p in standbys),
        "pss_total_mib": sum(_pss_mib(p) for p in (server_pid, *stubs, *hosts, *standbys)),
    }


def reference_output(model: str, ids: np.ndarray) -> np.ndarray:
    """The plain zoo model's output for ``ids`` on this machine's CPU."""
    import torch

    from deepplan_backend.runtime.zoo import load_model

    module = load_model(model).module
    with torch.inference_mode():
        return module(input_ids=torch.from_numpy(ids)).float().numpy()


def run_point(args: argparse.Namespace, process: str, count: int, ids: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    """One server start with `count` models in `process` mode; the measured row."""
    from deepplan_backend.repository import make_instances

    row: dict[str, Any] = {"process": process, "instances": count, "model": args.model, "error": ""}
    gpus = gpu_used_mib()
    n_gpus = len(gpus) if gpus else 0
    row["gpus"] = n_gpus
    row["gpu_used_before_mib"] = sum(gpus) if gpus else None
    with tempfile.TemporaryDirectory(prefix="deepplan-scale-") as work, scratch_state_dir("deepplan-scale-") as mem:
        repo, state = Path(work) / "repo", Path(mem).resolve() / f"residency-{process}-n{count}"
        allow_paths(args.plans, args.out, state)  # the server's default plan repository stays the run's
        params = {
            "engine": "deepplan",
            "process": process,
            "plan_repository": str(args.plans.resolve()),
            "residency_dir": str(state),
            "seq_len": str(ids.shape[1]),
        }
        if args.budget:
            params["budget"] = args.budget
        names = [f.name for f in make_instances(args.model, count, repo, gpus=n_gpus, parameters=params)]
        log = (args.out / f"{process}-n{count}.log").open("w")
        server, cfg = experiment_server(repo, log, args.ready_timeout)
        try:
            _, ready_s = start_and_wait(server, cfg, names, args.ready_timeout)
            row["ready_s"] = round(ready_s, 1)
            time.sleep(2.0)  # let lazily started host threads settle before reading memory
            loaded = gpu_used_mib()
            row["gpu_used_loaded_mib"] = sum(loaded) if loaded else None
            row.update(process_memory(server.pid or 0))
            say(f"{process}:{count}: all models ready in {row['ready_s']} s; GPUs used {loaded} MiB")
            row.update(_serve_each(cfg.url("gRPC"), names, ids, want))
            served = gpu_used_mib()
            row["gpu_used_served_mib"] = sum(served) if served else None
            say(
                f"{process}:{count}: {row['answers']} answers, {row['wrong']} wrong, cold p50 {row['cold_p50_ms']} ms;"
                f" GPUs used {served} MiB"
            )
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            say(f"{process}:{count}: FAILED: {row['error']}")
        finally:
            server.stop()
            log.close()
    time.sleep(5.0)  # engine hosts linger a few seconds after their last model
    after = gpu_used_mib()
    row["gpu_used_after_stop_mib"] = sum(after) if after else None
    return row


def _serve_each(url: str, names: Sequence[str], ids: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    """One request to every model in order; correctness and client-side cold latency."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    cold_ms, wrong, errors = [], 0, 0
    for i, name in enumerate(names):
        inp = grpcclient.InferInput("input_ids", list(ids.shape), "INT64")
        inp.set_data_from_numpy(ids)
        outs = [grpcclient.InferRequestedOutput("output"), grpcclient.InferRequestedOutput("cold_start")]
        start = time.perf_counter()
        try:
            result = client.infer(name, [inp], outputs=outs, client_timeout=120.0)
        except Exception as exc:
            errors += 1
            say(f"  {name}: {exc}")
            continue
        ms = (time.perf_counter() - start) * 1e3
        if result.as_numpy("cold_start")[0, 0] == 1:
            cold_ms.append(ms)
        if not np.allclose(result.as_numpy("output"), want, rtol=1e-3, atol=1e-3):
            wrong += 1
        if (i + 1) % 50 == 0:
            say(f"  {i + 1}/{len(names)} models answered")
    client.close()
    return {
        "answers": len(names) - errors,
        "errors": errors,
        "wrong": wrong,
        "cold_starts": len(cold_ms),
        "cold_p50_ms": round(float(np.median(cold_ms)), 2) if cold_ms else None,
    }


def per_model_overhead(rows: list[dict[str, Any]]) -> dict[str, float]:
    """MiB of GPU memory per added model (all GPUs together), per process mode with two or more points."""
    out = {}
    for process in dict.fromkeys(r["process"] for r in rows):
        pts = sorted(
            (r["instances"], r["gpu_used_loaded_mib"])
            for r in rows
            if r["process"] == process and r.get("gpu_used_loaded_mib") is not None and not r["error"]
        )
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            out[process] = round((pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]), 2)
    return out


def parse_points(texts: Sequence[str]) -> list[tuple[str, int]]:
    """``shared:200`` -> ("shared", 200)."""
    points = []
    for text in texts:
        process, _, n = text.partition(":")
        if process not in ("shared", "instance") or not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"point {text!r}: expected shared:N or instance:N with N >= 1")
        points.append((process, int(n)))
    return points


def plot_scale(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """GPU memory in use (all GPUs) against the number of models: loaded (solid) and after serving (dashed).

    None (no file) when no row has GPU memory figures (a CPU run).
    """
    if not any(r.get("gpu_used_loaded_mib") is not None for r in rows):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, process in enumerate(dict.fromkeys(r["process"] for r in rows)):
        mine = sorted((r for r in rows if r["process"] == process), key=lambda r: r["instances"])
        for key, style, what in (("gpu_used_loaded_mib", "-o", "loaded"), ("gpu_used_served_mib", "--x", "served")):
            pts = [(r["instances"], r[key] / 1024) for r in mine if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, color=f"C{i}", label=f"process: {process}, {what}")
    ax.set_xscale("log")
    counts = sorted({int(r["instances"]) for r in rows})
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("models loaded")
    ax.set_ylabel("GPU memory in use, all GPUs (GiB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _title(rows: Sequence[dict[str, Any]]) -> str:
    first = rows[0] if rows else {}
    return f"{first.get('model', '')} models on {first.get('gpus', '?')} GPUs"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; see the module docstring."""
    p = argparse.ArgumentParser(prog="python3 -m benchmark.triton_scale", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="bert-base", help="zoo text model every instance serves (default bert-base)")
    p.add_argument(
        "--points", nargs="+", default=["shared:4", "shared:200"], help="PROCESS:N (default shared:4 shared:200)"
    )
    p.add_argument("--seq-len", type=int, default=384, help="tokens per request (default 384)")
    p.add_argument("--budget", default="", help="per-GPU residency budget, e.g. 2GiB (default: device memory)")
    p.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for all models")
    p.add_argument("--out", type=Path, help="output folder (required unless --plot)")
    p.add_argument("--plot", type=Path, metavar="SCALE_JSON", help="only redraw the figure of a finished run")
    args = p.parse_args(argv)
    if args.plot is not None:
        try:
            finished = json.loads(args.plot.read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            p.error(f"--plot {args.plot}: not a scale JSON ({type(exc).__name__}: {exc})")
        png = plot_scale(finished, args.plot.with_suffix(".png"), _title(finished))
        print(f"wrote {png}" if png else f"{args.plot}: no GPU memory figures to plot")
        return 0
    if args.out is None:
        p.error("--out is required")
    try:
        points = parse_points(args.points)
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    if "resnet" in args.model:
        p.error("--model: a text model (requests are token ids)")
    args.out.mkdir(parents=True, exist_ok=True)
    args.plans = args.out / "plans"
    args.plans.mkdir(exist_ok=True)
    allow_paths(args.plans, args.out)
    ids = np.random.default_rng(0).integers(100, 1000, (1, args.seq_len), dtype=np.int64)
    want = reference_output(args.model, ids)
    rows: list[dict[str, Any]] = []
    for process, count in points:
        say(f"== {process}:{count}: {count} x {args.model}")
        rows.append({"date": now_iso(), **run_point(args, process, count, ids, want)})
        overhead = per_model_overhead(rows)
        for row in rows:
            row["gpu_mib_per_added_model"] = overhead.get(row["process"])
        # After every point: a run cut short keeps what it measured.
        csv_path, json_path = write_rows(
            rows, args.out / "scale.csv", {"command": sys.argv, "per_added_model_mib": overhead}, COLUMNS
        )
    keys = (
        "process",
        "instances",
        "ready_s",
        "gpu_used_before_mib",
        "gpu_used_loaded_mib",
        "gpu_used_served_mib",
        "stub_rss_mib_median",
        "pss_total_mib",
        "engine_hosts",
        "answers",
        "wrong",
        "cold_p50_ms",
        "error",
    )
    print(" ".join(f"{k:>20}" for k in keys))
    for row in rows:
        print(" ".join(f"{str(row.get(k, '-')):>20}" for k in keys))
    for process, mib in overhead.items():
        print(f"GPU memory per added model ({process}): {mib} MiB (all GPUs together)")
    png = plot_scale(rows, args.out / "scale.png", _title(rows))
    print(f"wrote {csv_path}, {json_path}" + (f" and {png}" if png else " (no GPU: no figure)"))
    ok = all(not r["error"] and r.get("wrong") == 0 and r.get("errors") == 0 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
