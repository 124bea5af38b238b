"""The CSV's columns, and its rows: one per listed model and one for the eviction instances together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .plan_evidence import peer_layers
from .stats import median_ms

if TYPE_CHECKING:
    from .protocol import Bench

COLUMNS: tuple[str, ...] = (
    "model",
    "engine",
    "graphs",
    "process",
    "devices",
    "pt",
    "pt_peer_layers",
    "gpu_name",
    "client_cold_ms",
    "backend_cold_ms",
    "engine_cold_ms",
    "ratio",
    "triton_floor_ms",
    "overhead_ms",
    "own_overhead_ms",
    "cold_samples",
    "first_client_cold_ms",
    "first_engine_cold_ms",
    "client_warm_p50_ms",
    "client_warm_p99_ms",
    "triton_load_ms",
    "triton_load_api_ms",
    "deepplan_load_ms",
    "deepplan_load_api_ms",
    "need_bytes",
    "budget_bytes",
    "cold_starts",
    "evict_run_requests",
    "evict_run_cold_starts",
    "evictions",
    "budget_respected",
    "all_correct",
    "server_ready_s",
    "all_models_loaded_s",
    "date",
)
TRACE_PHASES = (
    "read", "answer", "respond", "metrics", "exchange", "up", "host", "down", "validate", "queue", "room", "evict",
    "engine", "release",
)  # fmt: skip
"""Phases of the backend's ``deepplan trace`` lines (see `deepplan_backend.model`) reported per model: the
median over its cold requests, as ``trace_<phase>_ms`` columns."""
COLUMNS += tuple(f"trace_{p}_ms" for p in TRACE_PHASES)


def model_rows(bench: Bench, plans: dict[str, Any], gpu: str, date: str) -> list[dict[str, Any]]:
    """One row per listed model, and one for the eviction instances together (`plans`: `plan_summary`'s)."""
    s = bench.session
    rows = [_row(bench, plans, m, [m], gpu, date) for m in bench.args.models]
    rows.append(_row(bench, plans, f"{s.first}-evict-x{len(s.evicts)}", s.evicts, gpu, date))
    return rows


def _row(bench: Bench, plans: dict[str, Any], label: str, names: list[str], gpu: str, date: str) -> dict[str, Any]:
    s, args = bench.session, bench.args
    group = [s.stats[n] for n in names]
    evict_group = label not in s.stats
    # Listed models: their forced cold starts; eviction instances: cold starts of the eviction run.
    colds = bench.evictions.samples if evict_group else group[0].colds
    info = s.log.ready.get(names[0], {})
    client = median_ms([a.client_ms for a in colds])
    engine = median_ms([a.engine_ms for a in colds])
    first, loads, ev = group[0].first, group[0].loads, bench.evictions.summary
    floor = median_ms(bench.cold.floor.get(s.zoo_name(names[0]), []))
    overhead = client - engine if client is not None and engine is not None else None
    served_engine, num_devices = info.get("engine", args.engine), len(info.get("devices", [])) or 1
    return {
        "model": label,
        "engine": info.get("engine", args.engine),
        "graphs": not args.eager and bench.lay.gpu,
        "process": info.get("process", ""),
        "devices": "+".join(info.get("devices", [])),
        "pt": len(info.get("devices", [])) > 1,
        "pt_peer_layers": peer_layers(plans, s.zoo_name(names[0]), gpu, served_engine, num_devices),
        "gpu_name": gpu,
        "client_cold_ms": client,
        "backend_cold_ms": median_ms([a.backend_ms for a in colds if a.backend_ms is not None]),
        "engine_cold_ms": engine,
        "ratio": client / engine if client and engine else None,
        "triton_floor_ms": floor,
        "overhead_ms": overhead,
        "own_overhead_ms": overhead - floor if overhead is not None and floor is not None else None,
        "cold_samples": len(colds),
        "first_client_cold_ms": first.client_ms if first else None,
        "first_engine_cold_ms": first.engine_ms if first else None,
        "client_warm_p50_ms": median_ms(group[0].warm),
        "client_warm_p99_ms": median_ms(group[0].warm, 99),
        "triton_load_ms": loads.get("triton_load_ms"),
        "triton_load_api_ms": loads.get("triton_load_api_ms"),
        "deepplan_load_ms": loads.get("deepplan_load_ms"),
        "deepplan_load_api_ms": loads.get("deepplan_load_api_ms"),
        "need_bytes": info.get("need_bytes"),
        "budget_bytes": bench.lay.budget,
        "cold_starts": sum(st.cold_starts for st in group),
        "evict_run_requests": ev.get("requests"),
        "evict_run_cold_starts": ev.get("cold_starts"),
        "evictions": ev.get("evictions_observed"),
        "budget_respected": ev.get("budget_respected"),
        "all_correct": all(st.wrong == 0 for st in group) and sum(st.answers for st in group) > 0,
        "server_ready_s": s.ready_s,
        "all_models_loaded_s": s.all_loaded_s,
        "date": date,
        **trace_columns(s.log.cold_traces, names),
    }


def trace_columns(cold_traces: dict[str, list[dict[str, float]]], names: list[str]) -> dict[str, float | None]:
    """Median phase times of the models' cold requests, from the backend's trace lines (`ServerLog.cold_traces`)."""
    traces = [t for n in names for t in cold_traces.get(n, [])]
    return {f"trace_{p}_ms": median_ms([t[p] for t in traces if p in t]) for p in TRACE_PHASES}
