"""Table mode: configurations (`ENGINE:DEVICES`) and the CSV/JSON the Fig. 10 experiment writes."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from deepplan_backend.runtime.plan import ENGINES

from .measure import Measurement

COLUMNS = (
    "model",
    "engine",
    "devices",
    "dtype",
    "cold_ms",
    "cold_mean_ms",
    "cold_setup_ms",
    "warm_ms",
    "limit_ms",
    "predicted_ms",
    "copied_bytes",
    "samples",
    "max_abs_diff",
    "plain_max_abs_diff",
    "graph_replayed",
    "gpu_name",
    "date",
)


def parse_config(text: str) -> tuple[str, tuple[int, ...]]:
    """`deepplan:0,1` -> ("deepplan", (0, 1)); `demand` alone -> the default device (GPU 0, else the CPU)."""
    engine, _, devices = text.partition(":")
    if engine not in ENGINES:
        raise ValueError(f"config {text!r}: engine must be one of {', '.join(ENGINES)}")
    try:
        ids = tuple(int(d) for d in devices.split(",")) if devices else ()
    except ValueError:
        raise ValueError(f"config {text!r}: devices must be comma-separated GPU ids, e.g. deepplan:0,1") from None
    return engine, ids


def default_configs() -> list[tuple[str, tuple[int, ...]]]:
    """The paper's Fig. 10 set, trimmed to the GPUs this machine has."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    one: tuple[int, ...] = (0,) if gpus else ()
    configs: list[tuple[str, tuple[int, ...]]] = [("demand", one), ("pipeline", one), ("deepplan", one)]
    if gpus >= 2:
        configs += [("pipeline", (0, 1)), ("deepplan", (0, 1))]
    if gpus >= 4:
        configs += [("deepplan", (0, 1, 2, 3))]
    return configs


def write_records(records: Sequence[dict[str, object]], columns: Sequence[str], csv_path: Path) -> None:
    """Write records as CSV (floats to 4 decimals) and as JSON beside it; rewritten whole, so call it per row."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for rec in records:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in rec.items()})
    csv_path.with_suffix(".json").write_text(json.dumps(list(records), indent=1))


def write_results(rows: Sequence[Measurement], csv_path: Path, gpu: str, dtype: str) -> None:
    """Write all measurements so far (rewritten after each model: a crash loses little)."""
    date = dt.date.today().isoformat()
    records = []
    for r in rows:
        rec = asdict(r)
        rec["devices"] = " ".join(str(d) for d in r.devices if d >= 0) or "cpu"
        rec.update(gpu_name=gpu, date=date, dtype=dtype)
        records.append({k: rec.get(k) for k in COLUMNS})
    write_records(records, COLUMNS, csv_path)
