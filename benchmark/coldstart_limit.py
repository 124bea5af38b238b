"""Cold start against the hardware limit (issue "remove the CPU from the cold path").

    python3 -m benchmark.coldstart_limit --all --dtypes float32 float16 -p plans -o results/coldstart_limit.csv

For each model and dtype, in one run on one machine: On-Demand and PipeSwitch (eager, the baselines), and
DeepPlan (DHA+PT) with the cold and warm forward replayed as CUDA graphs, on each device set given (the best
is reported). The limit is max(GPU time of the forward with resident weights — the warm graph replay —,
bytes the best plan copies ÷ the aggregate H2D bandwidth of its devices, measured in this run).

Every output (cold and warm, every configuration) is compared with On-Demand's: ``max_abs_diff`` and ``correct``
(within `TOLERANCE` for the dtype; empty when On-Demand's own output is not finite, i.e. the model overflows in
that dtype, as ResNet-101's random weights do in float16); the exit code is 1 if any row is not correct.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from deepplan_backend.runtime.plan import PlanError
from deepplan_backend.runtime.prepared import gpu_name, prepare
from deepplan_backend.runtime.transfer import DeviceError, resolve_devices
from deepplan_backend.runtime.zoo import PAPER_MODELS, ModelSourceError, parse_dtype
from planner.__main__ import default_plan_repo, positive_int
from planner.profiler import measure_links

from .__main__ import obtain_plan
from .measure import Run, measure_interleaved
from .table import write_records

COLUMNS = (
    "model",
    "dtype",
    "devices",
    "cold_ms",
    "warm_ms",
    "limit_ms",
    "demand_ms",
    "pipeline_ms",
    "vs_pipeline",
    "vs_demand",
    "cold_over_limit",
    "max_abs_diff",
    "correct",
    "graph_replayed",
    "gpu_name",
    "date",
)


TOLERANCE = {"float32": 1e-3, "float16": 1e-2, "bfloat16": 5e-2}
"""Largest |output - On-Demand output| accepted per dtype (same weights, possibly other kernels)."""


def default_device_sets() -> list[str]:
    """1, 2 and 4 GPUs (the paper's sets), as many as this machine has."""
    import torch

    count = torch.cuda.device_count()
    return [",".join(str(d) for d in range(n)) for n in (1, 2, 4) if n <= max(count, 1)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m benchmark.coldstart_limit", description=__doc__)
    p.add_argument("-m", "--model", action="append", default=[])
    p.add_argument("--all", action="store_true")
    p.add_argument("--dtypes", nargs="+", default=["float32"], help="float32, float16, bfloat16 (or fp32/fp16/bf16)")
    p.add_argument(
        "--device-sets", nargs="+", default=None, help="comma-separated GPU ids (default: 1, 2 and 4 GPUs as present)"
    )
    p.add_argument("-p", "--plan-repo", type=Path, default=None)
    p.add_argument("-n", "--repeats", type=positive_int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--eager-plans",
        action="store_true",
        help="follow plans profiled in the eager regime (as before plans knew their regime), for comparison",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("results/coldstart_limit.csv"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write CSV + JSON; exit code 0, 1 (a wrong output), 2 (cannot run), 3 (crashed)."""
    args = _parser().parse_args(argv)
    try:
        args.dtypes = [parse_dtype(d) for d in args.dtypes]
        return _run(args)
    except (ModelSourceError, DeviceError, PlanError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # e.g. out of memory mid-run: not a wrong output (exit 1); the rows so far are written
        traceback.print_exc()
        return 3


def _run(args: argparse.Namespace) -> int:
    args.batch_size, args.seq_len, args.make_plans = 1, None, True
    args.graphs = not args.eager_plans  # DeepPlan runs as graphs here, so by default it follows a graph-regime plan
    repo = args.plan_repo or default_plan_repo()
    sets = [tuple(int(d) for d in s.split(",")) for s in args.device_sets or default_device_sets()]
    all_devices = resolve_devices(sorted({d for s in sets for d in s}))
    target = (sets[0][0],)  # the baselines run on the first set's target alone
    links = {s: measure_links(resolve_devices(list(s))) for s in {*sets, target}}
    rows = []
    failures = 0
    for dtype in args.dtypes:
        for name in list(PAPER_MODELS) if args.all else args.model:
            prepared = prepare(name, dtype=dtype)  # canonical already (main)
            plan = obtain_plan(prepared, args, repo, all_devices)
            one = tuple(resolve_devices(list(target)))
            runs = [Run("demand", one, links[target]), Run("pipeline", one, links[target])]
            runs += [Run("deepplan", tuple(resolve_devices(list(s))), links[s], graphs=True) for s in sets]
            res = measure_interleaved(prepared, runs, plan, 1, None, args.repeats, args.warmup)
            demand, pipeline, deep = res[0], res[1], res[2:]
            best = min(deep, key=lambda r: r.cold_ms)
            gpu_exec = min(r.warm_ms for r in deep)  # graph replay with resident weights, host round trip included
            limit = max(gpu_exec, best.limit_ms)
            diff = max((r.max_abs_diff for r in res), key=lambda d: (d != d, d))  # a NaN wins
            checkable = demand.reference_finite
            correct: bool | None = diff <= TOLERANCE[dtype] if checkable else None
            failures += correct is False
            row = {
                "model": name,
                "dtype": dtype,
                "devices": " ".join(map(str, best.devices)),
                "cold_ms": best.cold_ms,
                "warm_ms": best.warm_ms,
                "limit_ms": limit,
                "demand_ms": demand.cold_ms,
                "pipeline_ms": pipeline.cold_ms,
                "vs_pipeline": pipeline.cold_ms / best.cold_ms,
                "vs_demand": demand.cold_ms / best.cold_ms,
                "cold_over_limit": best.cold_ms / limit,
                "max_abs_diff": diff,
                "correct": correct,
                "graph_replayed": best.graph_replayed,
                "gpu_name": gpu_name(all_devices[0]),
                "date": dt.date.today().isoformat(),
            }
            rows.append(row)
            print(
                f"{name:14s} {dtype:8s} d={row['devices']:8s} cold {best.cold_ms:7.3f} warm {best.warm_ms:7.3f} "
                f"limit {limit:7.3f} ({row['cold_over_limit']:.2f}x) | demand {demand.cold_ms:7.3f} "
                f"pipeline {pipeline.cold_ms:7.3f} -> {row['vs_pipeline']:.2f}x vs pipeline"
                + _notes(correct, diff, dtype, best.graph_replayed),
                flush=True,
            )
            write_records(rows, COLUMNS, args.output)
    return 1 if failures else 0


def _notes(correct: bool | None, diff: float, dtype: str, replayed: bool) -> str:
    """What a row's console line must warn about."""
    notes = []
    if correct is False:
        notes.append(f"WRONG OUTPUT (max diff {diff:.3g})")
    if correct is None:
        notes.append(f"NOT CHECKED: the plain model overflows in {dtype} (non-finite output)")
    if not replayed:
        notes.append("NOT REPLAYED AS A GRAPH (eager)")
    return "".join(f" | {n}" for n in notes)


if __name__ == "__main__":
    sys.exit(main())
