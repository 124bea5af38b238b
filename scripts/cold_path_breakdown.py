"""Where a cold start's host time goes, phase by phase (map arena, issue copies, bind, forward, sync).

    python3 scripts/cold_path_breakdown.py -m bert-base -e deepplan -d 0 1 -p plans

Prints median milliseconds per phase over repeated cold starts; used to find what bounds the cold path.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deepplan_backend.runtime.engine import ColdStartEngine, _apply
from deepplan_backend.runtime.plan_repository import load_plan
from deepplan_backend.runtime.prepared import gpu_name, prepare
from deepplan_backend.runtime.schedules import schedule_for
from deepplan_backend.runtime.transfer import resolve_devices


def main() -> None:
    """Parse arguments, run cold starts phase by phase, print medians."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-m", "--model", default="bert-base")
    ap.add_argument("-e", "--engine", default="deepplan")
    ap.add_argument("-d", "--devices", type=int, nargs="+", default=[0])
    ap.add_argument("-p", "--plan-repo", default="plans")
    ap.add_argument("-n", "--repeats", type=int, default=10)
    args = ap.parse_args()
    devices = resolve_devices(args.devices)
    prepared = prepare(args.model)
    plan = None
    if args.engine == "deepplan":
        key = prepared.plan_key(1, None, gpu_name(devices[0]))  # this script times the eager cold path
        plan = load_plan(args.plan_repo, key, prepared.fingerprint)
    schedule, overlap = schedule_for(args.engine, len(devices), prepared.table.nbytes, plan)
    engine = ColdStartEngine(prepared.model, prepared.store, devices)
    inputs = prepared.model.example_inputs(1)
    phases: dict[str, list[float]] = {k: [] for k in ("map", "issue", "bind", "forward", "sync", "total", "engine")}
    for k in range(args.repeats + 3):
        engine.evict()
        torch.cuda.synchronize()
        layout = engine._layout(schedule)
        engine.evict()
        t0 = time.perf_counter()
        layout.arena.map()
        t1 = time.perf_counter()
        tokens = engine.copier.issue(layout.jobs)
        t2 = time.perf_counter()
        _apply(layout.binding)
        t3 = time.perf_counter()
        with torch.inference_mode():
            out = engine._pipelined_forward(engine._to_device(inputs), layout, tokens)
        t4 = time.perf_counter()
        out.float().cpu()
        t5 = time.perf_counter()
        engine._resident = layout
        engine.evict()
        t6 = time.perf_counter()
        res = engine.infer(inputs, schedule, overlap)
        if k >= 3:
            for name, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0), strict=False):
                phases[name].append(v * 1e3)
            phases["engine"].append(res.latency_ms)
        del t6
    print(
        f"{args.model} {args.engine} d={args.devices} chunks={len(layout.jobs)} "
        + " ".join(f"{k}={statistics.median(v):.3f}" for k, v in phases.items())
    )


if __name__ == "__main__":
    main()
