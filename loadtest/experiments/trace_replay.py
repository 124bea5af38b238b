r"""Fig. 14 flow: the Azure Functions 2019 trace replayed open loop on a mix of models, per engine.

    python3 -m loadtest.experiments.trace_replay --trace-dir data/azure2019 --models bert-base gpt2 roberta-base \
        --instances 30 --rate 100 --window-minutes 180 --time-scale 60 --engines pipeline deepplan \
        --out results/fig14

Instance i serves ``--models[i % len(models)]`` and is named ``<model>-<i>``; the trace's function j is folded
onto instance j mod N by ``loadtest/azure_trace.py`` (sorted by daily count, scaled to ``--rate`` req/s over the
day, Poisson inside each minute; ``--time-scale`` trace minutes per 60 s at the same req/s). Per engine variant:
the repository, the real ``tritonserver`` through `deepplan_backend.serve` (waiting until every model is
ready), ``locust -f loadtest/azure_trace.py --headless`` as a subprocess, then the server stopped.

Outputs in ``--out``: ``fig14.csv`` / ``fig14.json`` (one row per engine), ``fig14_timeline.csv`` (per engine
and time window: requests, p99, goodput, cold-start rate, from each per-request log), ``fig14.png`` (p99 and
cold-start rate over time, one line per engine), and ``<engine>/`` per run (requests.csv, summary.json, logs,
plots). Without the dataset: ``python3 -m loadtest.make_trace --out traces/synthetic`` and
``--trace-dir traces/synthetic``. Exit code 0 when every run worked, 1 when one failed, 2 on bad options.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from loadtest.experiments.cli import add_common_arguments, check_common  # noqa: E402
from loadtest.experiments.devices import resolve_devices  # noqa: E402
from loadtest.experiments.point import locust_common, point_env, run_point  # noqa: E402
from loadtest.experiments.progress import say  # noqa: E402
from loadtest.experiments.repository import build_repository, instance_names, model_params  # noqa: E402
from loadtest.experiments.server import allow_paths  # noqa: E402
from loadtest.experiments.table import now_iso, row_of, write_rows  # noqa: E402
from loadtest.results import RequestRecord, read_log, windowed  # noqa: E402

NAME = "fig14"
TIMELINE_COLUMNS = ("engine", "start_s", "trace_minute", "requests", "p99_ms", "goodput_pct", "cold_start_pct")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line; the trace file is looked up here, so a missing one fails before any server starts."""
    p = argparse.ArgumentParser(prog="python3 -m loadtest.experiments.trace_replay", description=__doc__.split("\n")[0])
    p.add_argument("--trace-dir", required=True, help="dataset folder, a sample folder, or one invocations CSV")
    p.add_argument("--trace-day", type=int, default=2, help="day file of --trace-dir (default 2)")
    p.add_argument("--models", nargs="+", default=["bert-base", "gpt2", "roberta-base"], help="zoo models mixed")
    p.add_argument("--instances", type=int, default=30, help="model instances N (default 30)")
    p.add_argument("--window-start", type=int, default=-1, help="first minute, as in the header (default: first)")
    p.add_argument("--window-minutes", type=int, default=180, help="replayed trace minutes (default 180)")
    p.add_argument("--time-scale", type=float, default=1.0, help="trace minutes per 60 s (default 1)")
    p.add_argument("--window-s", type=float, default=None, help="timeline window in s (default: about 60 points)")
    add_common_arguments(p)
    args = p.parse_args(argv)
    check_common(p, args, args.models)
    if args.instances < len(args.models):
        p.error(f"--instances ({args.instances}) must be >= the number of --models ({len(args.models)})")
    if args.window_minutes <= 0 or args.time_scale <= 0:
        p.error("--window-minutes and --time-scale must be > 0")
    if args.window_s is not None and args.window_s <= 0:
        p.error("--window-s must be > 0")
    from loadtest.trace import find_invocation_file

    try:
        args.trace_file = Path(find_invocation_file(str(args.trace_dir), args.trace_day)).resolve()
    except Exception as exc:  # missing folder / file: the trace module's message says what to do
        p.error(f"--trace-dir: {exc}")
    return args


def replay_seconds(window_minutes: int, time_scale: float) -> float:
    """Wall-clock length of the replayed window."""
    return 60.0 * window_minutes / time_scale


def timeline_rows(
    engine: str, records: Sequence[RequestRecord], window_s: float, slo_ms: float, duration_s: float, scale: float
) -> list[dict[str, Any]]:
    """Per time window of one run's per-request log: requests, p99, goodput and cold-start rate."""
    out = []
    for w in windowed(records, window_s, slo_ms, duration_s):
        out.append(
            {
                "engine": engine,
                "start_s": w.start_s,
                "trace_minute": w.start_s * scale / 60.0,
                "requests": w.requests,
                "p99_ms": w.p99_ms,
                "goodput_pct": w.goodput_pct,
                "cold_start_pct": None if w.cold_start_rate is None else 100.0 * w.cold_start_rate,
            }
        )
    return out


def write_timeline(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """``fig14_timeline.csv``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TIMELINE_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r[k] is None else f"{r[k]:.3f}" if isinstance(r[k], float) else r[k] for k in r})
    return path


def plot_timeline(rows: Sequence[dict[str, Any]], path: Path, slo_ms: float, title: str = "") -> Path:
    """p99 latency and cold-start rate per window over trace time, one line per engine."""
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for engine in dict.fromkeys(r["engine"] for r in rows):
        pts = [r for r in rows if r["engine"] == engine]
        xs = [r["trace_minute"] for r in pts]
        axes[0].plot(xs, [float("nan") if r["p99_ms"] is None else r["p99_ms"] for r in pts], label=engine)
        cold = [float("nan") if r["cold_start_pct"] is None else r["cold_start_pct"] for r in pts]
        axes[1].plot(xs, cold, label=engine)
    axes[0].axhline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:g} ms")
    axes[0].set_ylabel("p99 latency (ms)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("cold starts (%)")
    axes[1].set_xlabel("trace time (minutes from the window's start)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right")
    axes[0].set_title(title or "Trace replay over time")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_results(
    out: Path,
    rows: Sequence[dict[str, Any]],
    timeline: Sequence[dict[str, Any]],
    doc: dict[str, Any],
    slo_ms: float,
    title: str = "",
) -> list[Path]:
    """``fig14.csv``, ``fig14.json``, ``fig14_timeline.csv`` and ``fig14.png``."""
    csv_path, json_path = write_rows(rows, out / f"{NAME}.csv", doc)
    tl = write_timeline(timeline, out / f"{NAME}_timeline.csv")
    png = plot_timeline(timeline, out / f"{NAME}.png", slo_ms, title)
    return [csv_path, json_path, tl, png]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the replay per engine; see the module docstring."""
    args = parse_args(argv)
    out: Path = args.out
    try:
        dev = resolve_devices(args.devices)
    except ValueError as exc:
        say(f"error: {exc}")
        return 2
    where = dev.where
    seconds = replay_seconds(args.window_minutes, args.time_scale)
    window_s = args.window_s or max(1.0, seconds / 60.0)
    say(
        f"trace replay of {args.trace_file}: {args.instances} instances of {args.models}, engines {args.engines}, "
        f"{args.window_minutes} min at x{args.time_scale:g} = {seconds:.0f} s each, on {where}"
    )
    plans, tmp, mem = point_env(out)
    rows: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"experiment": "fig14", "argv": list(sys.argv if argv is None else argv), "date": now_iso()}
    doc["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    instances = instance_names(args.models, args.instances)
    title = f"{'+'.join(args.models)} x{args.instances}, {args.rate:g} req/s, {where}"
    with tmp, mem:
        for engine in args.engines:
            say(f"== {engine}")
            work = Path(tmp.name) / engine
            residency = Path(mem.name) / engine
            residency.mkdir(parents=True)
            allow_paths(plans, residency)
            build_repository(work / "repo", instances, engine, dev, model_params(args, plans, residency))
            (work / "models.txt").write_text("".join(f"{i.name}\n" for i in instances))
            locust_args = [
                "-f",
                "loadtest/azure_trace.py",
                "--models",
                f"@{work / 'models.txt'}",
                "--trace-dir",
                str(args.trace_file),
                "--trace-day",
                str(args.trace_day),
                "--window-start",
                str(args.window_start),
                "--window-minutes",
                str(args.window_minutes),
                "--time-scale",
                str(args.time_scale),
                *locust_common(args),
            ]
            res = run_point(
                work / "repo",
                [i.name for i in instances],
                locust_args,
                out / engine,
                ready_timeout_s=args.ready_timeout,
                locust_timeout_s=seconds + args.drain_s + 120.0,
                protocol=args.protocol,
            )
            row = row_of(engine, args.instances, args.models, args.rate, args.slo_ms, args.budget, dev, res)
            rows.append(row)
            log = out / engine / "requests.csv"
            if res.summary is not None and log.is_file():
                timeline += timeline_rows(engine, read_log(log), window_s, args.slo_ms, seconds, args.time_scale)
            say(
                f"   {engine}: p99 {row['p99_ms']} ms, goodput {row['goodput_pct']} %, "
                f"cold starts {row['cold_start_pct']} %, {row['requests']} requests"
            )
            write_rows(rows, out / f"{NAME}.csv", doc)
    paths = write_results(out, rows, timeline, doc, args.slo_ms, title)
    say("wrote " + ", ".join(str(p) for p in paths))
    failed = [r for r in rows if r["error"]]
    for r in failed:
        say(f"FAILED {r['engine']}: {r['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
