"""Per-request log, and the summary computed from it.

The log (CSV, one row per sent request) is the source of truth: the summary JSON written at the end of
a test and the one recomputed offline (``python3 -m loadtest.results requests.csv``) come from the same
function, :func:`summarize`.

Definitions used by the summary:

- percentiles are nearest-rank (the smallest value with at least q% of the values at or below it), over
  the latencies of successful requests;
- goodput = share of *sent* requests that succeeded within the SLO (errors count as misses);
- cold-start rate = cold starts / successful requests that reported the ``cold_start`` output;
- achieved rate = sent requests / ``max(duration, last send time)``: a dispatcher that falls behind
  stretches its sends past the schedule's end and the rate drops below the scheduled one;
- dispatch lag = send time - scheduled time (the open-loop dispatcher's own delay);
- throughput = successful requests / (time the last response arrived);
- steady state (``steady``) = the same counts, percentiles, goodput and cold-start rate over the requests sent
  at or after ``warmup_s``: a short test's first second holds the server's one-time start-up costs, which
  a run of minutes (the paper's) averages away but a 12 s point does not.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_COLUMNS = ("send_s", "scheduled_s", "model", "latency_ms", "ok", "error", "cold_start", "provision_ms")
LOG_FILE = "requests.csv"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class RequestRecord:
    """One sent request.

    Attributes:
        send_s: when it was sent, seconds from the start of the schedule.
        scheduled_s: when the schedule said to send it.
        model: Triton model name.
        latency_ms: send to response (or error), in ms.
        ok: whether the server answered without error.
        error: error message, empty when ok.
        cold_start: the ``cold_start`` output's flag; None when the model does not report it.
        provision_ms: provisioning time reported with it; None when not reported.
    """

    send_s: float
    scheduled_s: float
    model: str
    latency_ms: float
    ok: bool
    error: str = ""
    cold_start: bool | None = None
    provision_ms: float | None = None


def _opt(value: str) -> str | None:
    return value if value != "" else None


def write_log(path: str | Path, records: Iterable[RequestRecord]) -> Path:
    """Write records as CSV (columns :data:`LOG_COLUMNS`, empty cell = not reported)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LOG_COLUMNS)
        for r in records:
            writer.writerow(
                [
                    f"{r.send_s:.6f}",
                    f"{r.scheduled_s:.6f}",
                    r.model,
                    f"{r.latency_ms:.3f}",
                    int(r.ok),
                    r.error.replace("\n", " "),
                    "" if r.cold_start is None else int(r.cold_start),
                    "" if r.provision_ms is None else f"{r.provision_ms:.3f}",
                ]
            )
    return path


def read_log(path: str | Path) -> list[RequestRecord]:
    """Read a log written by :func:`write_log`."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != LOG_COLUMNS:
            raise ValueError(f"{path}: expected columns {','.join(LOG_COLUMNS)}, got {reader.fieldnames}")
        records = []
        for row in reader:
            cold = _opt(row["cold_start"])
            provision = _opt(row["provision_ms"])
            records.append(
                RequestRecord(
                    send_s=float(row["send_s"]),
                    scheduled_s=float(row["scheduled_s"]),
                    model=row["model"],
                    latency_ms=float(row["latency_ms"]),
                    ok=row["ok"] == "1",
                    error=row["error"],
                    cold_start=None if cold is None else cold == "1",
                    provision_ms=None if provision is None else float(provision),
                )
            )
    return records


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank q-th percentile (0 < q <= 100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _group_stats(records: Sequence[RequestRecord], slo_ms: float) -> dict[str, Any]:
    """Counts, latency percentiles, goodput and cold-start rate of a group of requests."""
    ok_lat = [r.latency_ms for r in records if r.ok]
    reported = [r for r in records if r.ok and r.cold_start is not None]
    cold = [r for r in reported if r.cold_start]
    within = sum(1 for x in ok_lat if x <= slo_ms)
    return {
        "requests": len(records),
        "ok": len(ok_lat),
        "errors": len(records) - len(ok_lat),
        "p50_ms": percentile(ok_lat, 50),
        "p99_ms": percentile(ok_lat, 99),
        "goodput_pct": 100.0 * within / len(records) if records else None,
        "cold_starts": len(cold),
        "cold_start_rate": len(cold) / len(reported) if reported else None,
    }


def summarize(
    records: Sequence[RequestRecord],
    slo_ms: float,
    duration_s: float | None = None,
    target_rate: float | None = None,
    scheduled_requests: int | None = None,
    run: dict[str, Any] | None = None,
    warmup_s: float = 0.0,
) -> dict[str, Any]:
    """Summary of a test from its per-request log (definitions in the module docstring).

    Args:
        records: the per-request log.
        slo_ms: latency objective for goodput.
        duration_s: the schedule's length; None = the last send time.
        target_rate: the configured rate in req/s (reported as is).
        scheduled_requests: how many requests the schedule held (more than ``len(records)`` when the
            test was stopped early).
        run: free-form description of the run (options, schedule), copied into the summary.
        warmup_s: requests sent before this many seconds are left out of the ``steady`` figures.
    """
    if warmup_s < 0:
        raise ValueError(f"warmup_s must be >= 0, got {warmup_s}")
    last_send = max((r.send_s for r in records), default=0.0)
    span = max(duration_s or 0.0, last_send)
    ok_lat = [r.latency_ms for r in records if r.ok]
    lags = [1000.0 * (r.send_s - r.scheduled_s) for r in records]
    provision = [r.provision_ms for r in records if r.ok and r.cold_start and r.provision_ms is not None]
    makespan = max((r.send_s + r.latency_ms / 1000.0 for r in records), default=0.0)
    overall = _group_stats(records, slo_ms)
    by_model: dict[str, list[RequestRecord]] = {}
    for r in records:
        by_model.setdefault(r.model, []).append(r)
    return {
        **overall,
        "slo_ms": slo_ms,
        "latency_ms": {
            "p50": overall["p50_ms"],
            "p90": percentile(ok_lat, 90),
            "p99": overall["p99_ms"],
            "mean": sum(ok_lat) / len(ok_lat) if ok_lat else None,
            "max": max(ok_lat, default=None),
        },
        "provision_ms": {
            "mean": sum(provision) / len(provision) if provision else None,
            "p99": percentile(provision, 99),
        },
        "duration_s": duration_s,
        "target_rate_rps": target_rate,
        "scheduled_requests": scheduled_requests,
        "scheduled_rate_rps": scheduled_requests / duration_s
        if scheduled_requests is not None and duration_s
        else None,
        "achieved_rate_rps": len(records) / span if span > 0 else None,
        "throughput_rps": len(ok_lat) / makespan if makespan > 0 else None,
        "dispatch_lag_ms": {"p50": percentile(lags, 50), "p99": percentile(lags, 99), "max": max(lags, default=None)},
        "steady": {"warmup_s": warmup_s, **_group_stats([r for r in records if r.send_s >= warmup_s], slo_ms)},
        "per_model": {m: _group_stats(rs, slo_ms) for m, rs in sorted(by_model.items())},
        "run": run or {},
    }


@dataclass(frozen=True)
class WindowStats:
    """Statistics of the requests sent within one time window ``[start_s, start_s + window_s)``."""

    start_s: float
    requests: int
    sent_rate_rps: float
    p99_ms: float | None
    goodput_pct: float | None
    cold_start_rate: float | None


def windowed(
    records: Sequence[RequestRecord], window_s: float, slo_ms: float, duration_s: float | None = None
) -> list[WindowStats]:
    """Split requests by send time into consecutive windows (for plots over time)."""
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    end = max(duration_s or 0.0, max((r.send_s for r in records), default=0.0))
    count = max(1, math.ceil(end / window_s))
    buckets: list[list[RequestRecord]] = [[] for _ in range(count)]
    for r in records:
        buckets[min(count - 1, int(r.send_s // window_s))].append(r)
    out = []
    for i, bucket in enumerate(buckets):
        stats = _group_stats(bucket, slo_ms)
        out.append(
            WindowStats(
                i * window_s,
                len(bucket),
                len(bucket) / window_s,
                stats["p99_ms"],
                stats["goodput_pct"],
                stats["cold_start_rate"],
            )
        )
    return out


def write_summary(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write a summary as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Recompute a summary from a per-request log; prints it (or writes it with --out)."""
    parser = argparse.ArgumentParser(
        prog="python3 -m loadtest.results", description="Summarize a per-request log written by a load test."
    )
    parser.add_argument("log", type=Path, help=f"the test's {LOG_FILE}")
    parser.add_argument("--slo-ms", type=float, default=100.0, help="latency SLO in ms, default 100")
    parser.add_argument("--duration-s", type=float, default=None, help="schedule length; default: last send time")
    parser.add_argument("--target-rate", type=float, default=None, help="configured rate to report, req/s")
    parser.add_argument(
        "--warmup-s", type=float, default=0.0, help="leave requests sent before this out of `steady` (default 0)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here instead of printing it")
    args = parser.parse_args(argv)
    if args.warmup_s < 0:
        parser.error(f"--warmup-s must be >= 0, got {args.warmup_s}")
    summary = summarize(read_log(args.log), args.slo_ms, args.duration_s, args.target_rate, warmup_s=args.warmup_s)
    if args.out:
        print(write_summary(args.out, summary))
    else:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
