"""Recompute an experiment's table and plot from its points' per-request logs, e.g. with another SLO or warm-up.

    python3 -m loadtest.experiments.resummarize results/fig12.json --warmup-s 2
    python3 -m loadtest.experiments.resummarize results/fig12.json --slo-ms 50 --out /tmp/fig12-slo50

Reads the experiment's JSON (``fig12.json`` of `loadtest.experiments.sweep`, ``fig14.json`` of
`loadtest.experiments.trace_replay`), recomputes every point's summary from ``<results_dir>/requests.csv`` with
`loadtest.results.summarize` — the code the run itself used — and writes the CSV and JSON again (``--out``: to
another folder; default: in place), plus the sweep plot for a Fig. 12 table. Server-side columns (readiness,
GPU, budget) are kept; a point whose log is missing keeps its row as it was and is reported. Nothing is re-run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.experiments.progress import say
from loadtest.experiments.table import summary_fields, write_rows
from loadtest.results import LOG_FILE, read_log, summarize


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m loadtest.experiments.resummarize", description=__doc__)
    p.add_argument("table", type=Path, help="the experiment's JSON (fig12.json, fig14.json)")
    p.add_argument("--slo-ms", type=float, default=None, help="latency SLO for goodput (default: the run's)")
    p.add_argument(
        "--warmup-s", type=float, default=None, help="left out of the steady-state columns (default: the table's)"
    )
    p.add_argument("--out", type=Path, default=None, help="folder for the new CSV/JSON/PNG (default: beside TABLE)")
    args = p.parse_args(argv)
    if args.slo_ms is not None and args.slo_ms <= 0:
        p.error("--slo-ms must be > 0")
    if args.warmup_s is not None and args.warmup_s < 0:
        p.error("--warmup-s must be >= 0")
    return args


def _log_of(row: dict[str, Any], table: Path) -> Path | None:
    """The point's per-request log: its recorded folder, else a folder of that name beside the table."""
    recorded = Path(str(row.get("results_dir") or ""))
    for folder in (recorded, table.parent / recorded.name):
        if str(folder) not in ("", ".") and (folder / LOG_FILE).is_file():
            return folder / LOG_FILE
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the table (and plot) from the logs; exit code 1 if a point's log was missing, 2 on bad input."""
    args = _parse(argv)
    try:
        doc = json.loads(args.table.read_text())
        rows: list[dict[str, Any]] = list(doc.pop("rows"))
        run_args: dict[str, Any] = doc.get("args") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        say(f"error: {args.table} is not an experiment table ({type(exc).__name__}: {exc})")
        return 2
    slo_ms = args.slo_ms if args.slo_ms is not None else float(run_args.get("slo_ms", 100.0))
    before = (doc.get("resummarized") or {}).get("warmup_s", run_args.get("warmup_s", 0.0))
    warmup_s = args.warmup_s if args.warmup_s is not None else float(before or 0.0)
    duration = run_args.get("duration_s")
    missing = 0
    for row in rows:
        log = _log_of(row, args.table)
        if log is None:
            say(f"{row.get('engine')} n={row.get('instances')}: no {LOG_FILE} under {row.get('results_dir')}; kept")
            missing += 1
            continue
        summary = summarize(read_log(log), slo_ms, duration, row.get("rate"), warmup_s=warmup_s)
        row.update(summary_fields(summary), slo_ms=slo_ms)
        say(
            f"{row.get('engine')} n={row.get('instances')}: p99 {row['p99_ms']} ms, steady p99 "
            f"{row['p99_steady_ms']} ms (after {warmup_s:g} s), goodput {row['goodput_pct']} %"
        )
    doc["resummarized"] = {"slo_ms": slo_ms, "warmup_s": warmup_s, "from": str(args.table)}
    out = args.out or args.table.parent
    name = args.table.stem
    csv_path, json_path = write_rows(rows, out / f"{name}.csv", doc)
    say(f"wrote {csv_path}, {json_path}")
    if doc.get("experiment") == "fig12" and rows:
        from loadtest.experiments.sweep import plot_sweep

        gpus = {f"{r.get('num_gpus')} x {r.get('gpu_name')}" for r in rows if r.get("gpu_name")}
        title = f"{run_args.get('model', '')}, {rows[0].get('rate', 0):g} req/s, SLO {slo_ms:g} ms, {', '.join(gpus)}"
        say(f"wrote {plot_sweep(rows, out / f'{name}.png', slo_ms, title)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
