"""The experiments' result table: its columns, one point's row, and the CSV / JSON writer."""

from __future__ import annotations

import csv
import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .devices import Devices
from .point import PointResult

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


def now_iso() -> str:
    """UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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
    """A CSV cell: floats to three decimals, None as empty."""
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
