r"""Fig. 12/13 flow: an instance-count sweep of one model under the synthetic open-loop workload, per engine.

    python3 -m loadtest.experiments.sweep --model bert-base --instances 20 40 80 \
        --engines pipeline deepplan deepplan+pt --devices auto --rate 100 --duration-s 60 --slo-ms 100 \
        --budget 2GiB --out results/fig12

For each engine variant x instance count N: a model repository of N deepplan instances of ``--model`` (named
``<model>-<i>``, round-robin over the GPUs, or on the CPU), the real ``tritonserver`` started through
`deepplan_backend.serve` (waiting until every model is ready), ``locust -f loadtest/synthetic.py --headless``
as a subprocess (open loop, uniform instance choice, Poisson arrivals), its ``summary.json`` read, the server
stopped. Engine variants: ``pipeline`` (PipeSwitch-style, target GPU only), ``deepplan`` (target GPU only),
``deepplan+pt`` (``devices auto``: target plus its peer GPUs).

Outputs in ``--out``: ``fig12.csv`` / ``fig12.json`` (one row per point), ``fig12.png`` (p99, goodput and
cold-start rate vs. instances, one line per engine), and ``<engine>-n<N>/`` per point (requests.csv,
summary.json, Locust and server logs, plots). Plans are made at the first load, into ``<out>/plans``.
Exit code 0 when every point ran, 1 when some failed (recorded in the ``error`` column), 2 on bad options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from loadtest.experiments.cli import add_common_arguments, check_common  # noqa: E402
from loadtest.experiments.devices import Devices, resolve_devices  # noqa: E402
from loadtest.experiments.point import point_env, run_point, synthetic_point  # noqa: E402
from loadtest.experiments.progress import say  # noqa: E402
from loadtest.experiments.table import now_iso, row_of, write_rows  # noqa: E402

NAME = "fig12"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(prog="python3 -m loadtest.experiments.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="bert-base", help="zoo model served by every instance (default bert-base)")
    p.add_argument("--instances", type=int, nargs="+", default=[20, 40, 80], help="instance counts (default 20 40 80)")
    p.add_argument("--duration-s", type=float, default=60.0, help="length of each point's schedule, s (default 60)")
    add_common_arguments(p)
    args = p.parse_args(argv)
    check_common(p, args, [args.model])
    if any(n < 1 for n in args.instances):
        p.error("--instances must be >= 1")
    if args.duration_s <= 0:
        p.error("--duration-s must be > 0")
    return args


def plot_sweep(rows: Sequence[dict[str, Any]], path: Path, slo_ms: float, title: str = "") -> Path:
    """p99 latency, goodput and cold-start rate vs. instance count, one line per engine.

    With a warm-up (``warmup_s`` > 0) the steady-state figures are drawn too, dashed, in the engine's colour.
    """
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = (
        ("p99_ms", "p99_steady_ms", "p99 latency (ms)"),
        ("goodput_pct", "goodput_steady_pct", "goodput (%)"),
        ("cold_start_pct", "cold_start_steady_pct", "cold starts (%)"),
    )
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    warmup = max((r.get("warmup_s") or 0.0 for r in rows), default=0.0)
    for ax, (key, steady_key, label) in zip(axes, panels, strict=True):
        for engine in engines:
            mine = [r for r in rows if r["engine"] == engine]
            pts = sorted((r["instances"], r[key]) for r in mine if r.get(key) is not None)
            if not pts:
                continue
            (line,) = ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=engine)
            steady = sorted((r["instances"], r[steady_key]) for r in mine if r.get(steady_key) is not None)
            if warmup > 0 and steady:
                xs, ys = [x for x, _ in steady], [y for _, y in steady]
                after = f"{engine}, after {warmup:g} s"
                ax.plot(xs, ys, marker="x", linestyle="--", color=line.get_color(), label=after)
        if key == "p99_ms":
            ax.axhline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:g} ms")
            ax.set_yscale("log")
        ax.set_xticks(sorted({int(r["instances"]) for r in rows}))
        ax.set_xlabel("instances")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; see the module docstring."""
    args = parse_args(argv)
    out: Path = args.out
    try:
        dev: Devices = resolve_devices(args.devices)
    except ValueError as exc:
        say(f"error: {exc}")
        return 2
    where = f"{dev.where} (GPUs {list(dev.gpu_ids)})" if dev.gpu_ids else dev.where
    say(f"sweep of {args.model}: instances {args.instances}, engines {args.engines}, on {where}")
    plans, tmp, mem = point_env(out)
    rows: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"experiment": "fig12", "argv": list(sys.argv if argv is None else argv), "date": now_iso()}
    doc["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    with tmp, mem:
        for engine in args.engines:
            for n in args.instances:
                tag = f"{engine}-n{n}"
                say(f"== {tag}: {n} x {args.model}, engine {engine}, {args.rate:g} req/s for {args.duration_s:g} s")
                repo, names, locust_args = synthetic_point(
                    args, engine, n, dev, plans, Path(tmp.name) / tag, Path(mem.name) / tag
                )
                res = run_point(
                    repo,
                    names,
                    locust_args,
                    out / tag,
                    ready_timeout_s=args.ready_timeout,
                    locust_timeout_s=args.duration_s + args.drain_s + 120.0,
                    protocol=args.protocol,
                )
                row = row_of(engine, n, [args.model], args.rate, args.slo_ms, args.budget, dev, res)
                rows.append(row)
                say(
                    f"   {tag}: p99 {row['p99_ms']} ms, goodput {row['goodput_pct']} %, "
                    f"cold starts {row['cold_start_pct']} %, {row['requests']} requests"
                )
                write_rows(rows, out / f"{NAME}.csv", doc)  # after every point: a crash keeps what ran
    csv_path, json_path = write_rows(rows, out / f"{NAME}.csv", doc)
    title = f"{args.model}, {args.rate:g} req/s, SLO {args.slo_ms:g} ms, {where}"
    png = plot_sweep(rows, out / f"{NAME}.png", args.slo_ms, title)
    say(f"wrote {csv_path}, {json_path}, {png}")
    failed = [r for r in rows if r["error"]]
    for r in failed:
        say(f"FAILED {r['engine']} n={r['instances']}: {r['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
