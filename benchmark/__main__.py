"""`python3 -m benchmark -m resnet50 -e deepplan -d 0 2`: average cold inference time, as the seed's benchmark.

Table mode (`--table`) runs models x configurations (`ENGINE:DEVICES`, e.g. `deepplan:0,1`) and writes CSV and
JSON with cold, warm, load-bound limit and predicted latency per row; `--make-plans` profiles and plans any
model whose plan is missing first (same run, same machine).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from deepplan_backend.runtime.plan import ENGINES, Plan, PlanError
from deepplan_backend.runtime.plan_repository import PlanNotFound, load_plan, save_plan
from deepplan_backend.runtime.prepared import PreparedModel, gpu_name, prepare
from deepplan_backend.runtime.transfer import DeviceError, resolve_devices
from deepplan_backend.runtime.zoo import PAPER_MODELS, ModelSourceError, parse_dtype
from planner.__main__ import default_plan_repo, device_counts_for, non_negative_int, positive_int
from planner.device_planning import plan_on_devices
from planner.profiler import measure_links

from . import fig10_plot
from .measure import Measurement, Run, measure_interleaved, plain_model_output
from .plot_files import draw_beside
from .table import default_configs, parse_config, write_results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m benchmark", description=__doc__)
    p.add_argument("-m", "--model", action="append", default=[], help="zoo name or checkpoint folder (repeatable)")
    p.add_argument("--all", action="store_true", help="the paper's eight models")
    p.add_argument("-e", "--engine", default="deepplan", choices=ENGINES)
    p.add_argument("-d", "--devices", type=int, nargs="+", default=None, help="GPU ids, target first (default: 0)")
    p.add_argument("-p", "--plan-repo", type=Path, default=None, help="default: $PLAN_REPO or ./plans")
    p.add_argument("-b", "--batch-size", type=positive_int, default=1)
    p.add_argument("-s", "--seq-len", type=positive_int, default=None)
    p.add_argument("--dtype", default="float32")
    p.add_argument("-n", "--repeats", type=positive_int, default=10, help="cold starts measured (after warm-up)")
    p.add_argument("--warmup", type=non_negative_int, default=3)
    p.add_argument("--table", action="store_true", help="run every model x --configs and write CSV/JSON")
    p.add_argument("--configs", nargs="+", default=None, help="ENGINE:DEVICES items, e.g. demand:0 deepplan:0,1")
    p.add_argument("-o", "--output", type=Path, default=Path("results/benchmark.csv"), help="table CSV path")
    p.add_argument("--make-plans", action="store_true", help="profile and plan models whose plan is missing")
    p.add_argument(
        "--graphs",
        action="store_true",
        help="replay cold and warm forwards as CUDA graphs, with plans made for graph execution (planner --graphs)",
    )
    return p


def obtain_plan(prepared: PreparedModel, args: argparse.Namespace, repo: Path, all_devices: list[torch.device]) -> Plan:
    """Load the model's plan for this GPU and regime, or (with --make-plans) profile and plan it now."""
    key = prepared.plan_key(args.batch_size, args.seq_len, gpu_name(all_devices[0]), graphs=args.graphs)
    try:
        return load_plan(repo, key, prepared.fingerprint)
    except PlanNotFound:
        if not args.make_plans:
            raise
    plan, verdicts = plan_on_devices(
        prepared, all_devices, device_counts_for(len(all_devices)), args.batch_size, args.seq_len, args.graphs
    )
    for verdict in verdicts:
        print(f"{prepared.model.name}: checked on the devices: {verdict.describe()}", file=sys.stderr)
    save_plan(repo, plan)
    return plan


def run_single(args: argparse.Namespace, repo: Path) -> int:
    """The seed's interface: one model, one engine, one device list."""
    devices = resolve_devices(args.devices)
    for name in args.model or ["resnet50"]:
        prepared = prepare(name, dtype=parse_dtype(args.dtype))
        plan = obtain_plan(prepared, args, repo, devices) if args.engine == "deepplan" or args.make_plans else None
        links = measure_links(devices)
        print(f"Benchmarking Inference {prepared.model.name}")
        run = Run(args.engine, tuple(devices), links, graphs=args.graphs)
        result = measure_interleaved(prepared, [run], plan, args.batch_size, args.seq_len, args.repeats, args.warmup)[0]
        print(f"model average inference time : {result.cold_mean_ms:.4f} ms")
        print(
            f"  warm {result.warm_ms:.3f} ms | load-bound limit {result.limit_ms:.3f} ms"
            + (f" | predicted {result.predicted_ms:.3f} ms" if result.predicted_ms is not None else "")
        )
    return 0


def run_table(args: argparse.Namespace, repo: Path) -> int:
    """Every model x every configuration; rows written as they complete."""
    configs = [parse_config(c) for c in args.configs] if args.configs else default_configs()
    all_devices = resolve_devices(sorted({d for _, ids in configs for d in ids}))
    # Bandwidths of every device set used, measured once in this run (the limit column depends on them).
    links = {ids: measure_links(resolve_devices(list(ids))) for ids in {ids for _, ids in configs}}
    rows: list[Measurement] = []
    models = list(PAPER_MODELS) if args.all else (args.model or ["resnet50"])
    for name in models:
        prepared = prepare(name, dtype=parse_dtype(args.dtype))
        plan = None
        if args.make_plans or any(engine == "deepplan" for engine, _ in configs):
            plan = obtain_plan(prepared, args, repo, all_devices)
        runs = [Run(engine, tuple(resolve_devices(list(ids))), links[ids], args.graphs) for engine, ids in configs]
        inputs = prepared.model.example_inputs(args.batch_size, args.seq_len)
        plain = plain_model_output(name, args.dtype, runs[0].devices[0], inputs)
        results = measure_interleaved(
            prepared, runs, plan, args.batch_size, args.seq_len, args.repeats, args.warmup, plain_output=plain
        )
        for result in results:
            rows.append(result)
            shown = ",".join(str(d) for d in result.devices if d >= 0) or str(all_devices[0])
            predicted = result.predicted_ms if result.predicted_ms is not None else float("nan")
            print(
                f"{name:14s} {result.engine:9s} d={shown:8s} cold {result.cold_ms:8.3f} ms  "
                f"warm {result.warm_ms:7.3f}  limit {result.limit_ms:7.3f}  pred {predicted:8.3f}  "
                f"vs plain model {result.plain_max_abs_diff:.1e}",
                flush=True,
            )
        write_results(rows, args.output, gpu_name(all_devices[0]), args.dtype)
        del prepared
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")
    draw_beside(args.output, fig10_plot.draw, fig10_plot.TableError, "benchmark.fig10_plot")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    repo = args.plan_repo or default_plan_repo()
    try:
        return run_table(args, repo) if args.table else run_single(args, repo)
    except (ModelSourceError, DeviceError, PlanError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
