r"""A baseline and a change, switched by one environment variable, run in a balanced order (A B B A ...).

    python3 -m benchmark.env_ab --env DEEPPLAN_REUSE_EVICTED_MEMORY --values 0 1 --rounds 2 \
        --csv triton_coldstart.csv --key model --metrics engine_cold_ms client_cold_ms --out results/ab_reuse \
        -- python3 -m benchmark.triton_coldstart --models bert-base --instances 8 --budget 2GiB --out {out}

Why: in session 15 the second of two runs on one device machine was slower than the first whatever it measured
(a drift of ~0.2-0.4 ms in cold starts of ~8.5 ms), so a single baseline-then-change pair mixed the change with its
order. Here round 1 runs the baseline (the first value) then the change, round 2 the change then the baseline, and
so on: a drift that is linear in time hits both settings alike, and the second-minus-first difference of each pair,
less the change's own part, estimates the order effect itself.

Each run gets its own folder (``{out}`` in the command: ``<out>/run<i>-<value>``) and the variable set to its value;
the tool reads the CSV the command wrote there (``--csv``), matches rows by ``--key``, and writes ``env_ab.csv``
(per key and metric: each setting's mean, change - baseline, change / baseline, and the order effect) with a JSON
beside it that also lists every run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .table import write_records

COLUMNS = (
    "key",
    "metric",
    "baseline",
    "change",
    "baseline_mean",
    "change_mean",
    "difference",
    "ratio",
    "order_effect",
    "rounds",
)


def run_order(values: tuple[str, str], rounds: int) -> list[str]:
    """The values in run order: baseline then change in odd rounds, change then baseline in even ones."""
    a, b = values
    return [v for r in range(rounds) for v in ((a, b) if r % 2 == 0 else (b, a))]


def read_rows(path: Path, key: Sequence[str]) -> dict[str, dict[str, str]]:
    """The CSV's rows by their key (the `key` columns joined with '/'); ValueError if a column is missing."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [k for k in key if rows and k not in rows[0]]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)}")
    return {"/".join(row[k] for k in key): row for row in rows}


def summarize(runs: list[dict[str, Any]], values: tuple[str, str], metrics: Sequence[str]) -> list[dict[str, object]]:
    """Per key and metric: each setting's mean over its runs, their difference and ratio, and the order effect.

    The order effect is the mean, over rounds, of (second run - first run) with the change's sign removed: with
    ABBA it is what running second cost, whatever ran.
    """
    baseline, change = values
    keys = sorted({k for run in runs for k in run["rows"]})
    records: list[dict[str, object]] = []
    for key in keys:
        for metric in metrics:
            per_run = [(run["value"], _number(run["rows"].get(key, {}).get(metric))) for run in runs]
            a = [x for v, x in per_run if v == baseline and x is not None]
            b = [x for v, x in per_run if v == change and x is not None]
            if not a or not b:
                continue
            mean_a, mean_b = statistics.mean(a), statistics.mean(b)
            pairs = [per_run[i : i + 2] for i in range(0, len(per_run) - 1, 2)]
            second_minus_first = [
                (second - first) - (mean_b - mean_a if second_value == change else mean_a - mean_b)
                for (_, first), (second_value, second) in pairs
                if first is not None and second is not None
            ]
            records.append({
                "key": key, "metric": metric, "baseline": baseline, "change": change,
                "baseline_mean": mean_a, "change_mean": mean_b, "difference": mean_b - mean_a,
                "ratio": mean_b / mean_a if mean_a else None,
                "order_effect": statistics.mean(second_minus_first) if second_minus_first else None,
                "rounds": len(pairs),
            })  # fmt: skip
    return records


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ABBA order and compare; see the module docstring."""
    p = argparse.ArgumentParser(prog="python3 -m benchmark.env_ab", description=__doc__.split("\n")[0])
    p.add_argument("--env", required=True, help="the environment variable that switches the change")
    p.add_argument("--values", nargs=2, required=True, metavar=("BASELINE", "CHANGE"))
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs; even counts balance the order (2)")
    p.add_argument("--csv", required=True, help="the CSV each run writes, relative to its {out} folder")
    p.add_argument("--key", nargs="+", default=["model"], help="columns that identify a row (model)")
    p.add_argument("--metrics", nargs="+", required=True, help="numeric columns to compare")
    p.add_argument("--out", type=Path, required=True, help="folder of the runs and of env_ab.csv")
    p.add_argument("--timeout-s", type=float, default=600.0, help="limit of one run")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command; {out} is the run's folder")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command after --")
    if not any("{out}" in part for part in command):
        p.error("the command must write into {out} (each run's own folder)")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    values = (args.values[0], args.values[1])
    runs: list[dict[str, Any]] = []
    for i, value in enumerate(run_order(values, args.rounds), start=1):
        folder = args.out / f"run{i}-{value}"
        folder.mkdir(parents=True, exist_ok=True)
        argv_i = [part.replace("{out}", str(folder)) for part in command]
        print(f"run {i}: {args.env}={value}: {' '.join(argv_i)}", flush=True)
        start = time.monotonic()
        with (folder / "run.log").open("w") as log:
            try:
                code = subprocess.run(
                    argv_i, env={**os.environ, args.env: value}, stdout=log, stderr=subprocess.STDOUT,
                    timeout=args.timeout_s, check=False,
                ).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                code = None
        if code != 0:
            what = "timed out" if code is None else f"exited with {code}"
            print(f"run {i} {what}; its log: {folder / 'run.log'}", file=sys.stderr)
            return 1
        rows = read_rows(folder / args.csv, args.key)
        runs.append({"run": i, "value": value, "folder": str(folder), "seconds": time.monotonic() - start,
                     "rows": rows})  # fmt: skip
    records = summarize(runs, values, args.metrics)
    out_csv = args.out / "env_ab.csv"
    write_records(records, COLUMNS, out_csv)
    doc = {"env": args.env, "values": list(values), "command": command, "records": records, "runs": runs}
    out_csv.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    print(f"{'key':24} {'metric':20} {values[0]:>10} {values[1]:>10} {'diff':>8} {'ratio':>7} {'order':>7}")
    for r in records:
        ratio = f"{r['ratio']:.3f}" if isinstance(r["ratio"], float) else "-"
        order = f"{r['order_effect']:+.3f}" if isinstance(r["order_effect"], float) else "-"
        print(
            f"{r['key']:24} {r['metric']:20} {r['baseline_mean']:10.3f} {r['change_mean']:10.3f} "
            f"{r['difference']:+8.3f} {ratio:>7} {order:>7}"
        )
    print(f"{args.env}: {values[0]} (baseline) against {values[1]}, {args.rounds} round(s); wrote {out_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
