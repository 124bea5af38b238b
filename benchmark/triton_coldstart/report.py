"""The run's results: the JSON document, the CSV / JSON files, and the table printed at the end (step 8)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from loadtest.experiments.table import write_rows

from .client import ATOL, RTOL
from .plan_evidence import plan_summary
from .rows import COLUMNS, model_rows
from .stats import all_correct

if TYPE_CHECKING:
    from .protocol import Bench


def document(bench: Bench, gpu: str, num_gpus: int) -> dict[str, Any]:
    """The JSON document of the run."""
    s = bench.session
    plans: dict[str, Any] = {}
    try:
        plans = plan_summary(bench.lay.plans)
    except Exception as exc:  # evidence only: the numbers stand without it
        s.errors.append(f"reading the plans: {type(exc).__name__}: {exc}")
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {
        "date": date,
        "gpu_name": gpu,
        "num_gpus": num_gpus,
        "torch": torch.__version__,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(bench.args).items()},
        "budget_bytes": bench.lay.budget,
        "server_ready_s": s.ready_s,
        "all_models_loaded_s": s.all_loaded_s,
        "startup_load_ms": s.load_ms,
        "rows": model_rows(bench, plans, gpu, date),
        "eviction_run": bench.evictions.summary,
        "served_on": s.log.ready,
        "pt_evidence": (
            "devices: the backend's 'deepplan: <instance> ready: ... devices=[...]' log line; "
            "pt_peer_layers and plans: layers the served plan variant loads through peer GPUs"
        ),
        "plans": plans,
        "per_model": {
            name: {
                "answers": st.answers,
                "cold_starts": st.cold_starts,
                "wrong": st.wrong,
                "max_abs_diff": st.max_abs_diff,
                "loads": st.loads,
                "cold_client_ms": [a.client_ms for a in st.colds],
                "cold_engine_ms": [a.engine_ms for a in st.colds],
                "warm_client_ms": st.warm,
            }
            for name, st in s.stats.items()
        },
        "floor_client_ms": bench.cold.floor,
        "all_correct": all_correct(s.stats),
        "errors": s.errors,
        "tolerance": {"rtol": RTOL, "atol": ATOL},
    }


def write_outputs(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``triton_coldstart.csv`` (one row per model) and ``triton_coldstart.json`` (everything)."""
    return write_rows(doc["rows"], out / "triton_coldstart.csv", doc, COLUMNS)


def print_table(doc: dict[str, Any]) -> None:
    """The short summary table."""

    def f(v: Any, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)

    print(
        f"\nTriton cold starts on {doc['gpu_name']} x{doc['num_gpus']} "
        f"(server ready in {f(doc['server_ready_s'], '.1f')} s, "
        f"budget {doc['budget_bytes'] / 2**20:.1f} MiB per device)"
    )
    head = (
        "model",
        "devices",
        "cold client",
        "cold engine",
        "ratio",
        "floor",
        "own",
        "warm p50",
        "warm p99",
        "triton load",
        "deepplan load",
        "colds",
        "correct",
    )
    print("  ".join(f"{h:>13}" for h in head))
    for r in doc["rows"]:
        cells = (
            r["model"],
            r["devices"] or "-",
            f(r["client_cold_ms"]),
            f(r["engine_cold_ms"]),
            f(r["ratio"], ".3f"),
            f(r["triton_floor_ms"]),
            f(r["own_overhead_ms"]),
            f(r["client_warm_p50_ms"]),
            f(r["client_warm_p99_ms"]),
            f(r["triton_load_ms"], ".0f"),
            f(r["deepplan_load_ms"], ".0f"),
            f(r["cold_starts"]),
            f(r["all_correct"]),
        )
        print("  ".join(f"{c:>13}" for c in cells))
    ev = doc["eviction_run"]
    if ev:
        print(
            f"eviction run: {ev['requests']} requests, {ev['cold_starts']} cold starts, {ev['evictions_observed']} "
            f"evictions (metric delta {ev['evictions_metric_delta']:.0f}), peak {ev['peak_used_bytes']} bytes <= "
            f"budget: {ev['budget_respected']}"
        )
    for r in doc["rows"]:
        if r["triton_load_ms"] and r["client_cold_ms"]:
            print(
                f"{r['model']}: plain Triton Python model ready and answering after {r['triton_load_ms']:.0f} ms; "
                f"deepplan model loaded after {f(r['deepplan_load_ms'], '.0f')} ms, then cold starts in "
                f"{r['client_cold_ms']:.2f} ms (the plain load takes "
                f"{r['triton_load_ms'] / r['client_cold_ms']:.0f}x as long)"
            )
    print(
        "latencies in ms; ratio = client / engine cold latency (target <= 1.2); floor = Triton's own latency for the"
        " same request to a Python model that computes nothing; own = client - engine - floor; all answers correct:",
        doc["all_correct"],
    )
    for e in doc["errors"]:
        print(f"ERROR {e}")
