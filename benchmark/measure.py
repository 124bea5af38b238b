"""Measure cold and warm latency of one (model, engine, device set), next to its load-bound limit.

A cold sample is: evict (device bytes back to the driver), then one request that provisions while it runs,
timed on the host from the request to its output on the CPU. The first samples pay one-time costs (kernel
libraries, allocator) and are discarded as warm-up.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepplan_backend.runtime.engine import ColdStartEngine
from deepplan_backend.runtime.plan import LinkProfile, Plan
from deepplan_backend.runtime.prepared import PreparedModel
from deepplan_backend.runtime.schedules import schedule_for


@dataclass(frozen=True)
class Measurement:
    """Latencies in ms; `limit_ms` = bytes copied / aggregate H2D bandwidth of the devices used."""

    model: str
    engine: str
    devices: tuple[int, ...]
    cold_ms: float
    cold_p50_ms: float
    warm_ms: float
    limit_ms: float
    copied_bytes: int
    predicted_ms: float | None
    samples: int


def load_bound_ms(copied_bytes: int, links: LinkProfile, num_devices: int) -> float:
    """Time to move `copied_bytes` at the aggregate host-to-GPU bandwidth of `num_devices` links."""
    aggregate = links.concurrent_h2d_gbps.get(num_devices, links.h2d_gbps * num_devices)
    return copied_bytes / (aggregate * 1e9) * 1e3


def measure(
    prepared: PreparedModel,
    engine_name: str,
    devices: Sequence[torch.device],
    plan: Plan | None,
    links: LinkProfile,
    batch_size: int = 1,
    seq_len: int | None = None,
    repeats: int = 10,
    warmup: int = 3,
) -> Measurement:
    """Run `warmup + repeats` cold starts (each followed by warm runs) and summarize."""
    schedule, overlap = schedule_for(engine_name, len(devices), prepared.table.nbytes, plan)
    engine = ColdStartEngine(prepared.model, prepared.store, devices)
    inputs = prepared.model.example_inputs(batch_size, seq_len)
    cold, warm = [], []
    copied = 0
    try:
        for k in range(warmup + repeats):
            engine.evict()
            first = engine.infer(inputs, schedule, overlap)
            second = engine.infer(inputs, schedule, overlap)
            if k >= warmup:
                cold.append(first.latency_ms)
                warm.append(second.latency_ms)
                copied = first.copied_bytes
    finally:
        engine.evict()
    predicted = None
    if plan is not None:
        predicted = plan.variant(engine_name, len(devices)).predicted_ms
    return Measurement(
        model=prepared.model.name,
        engine=engine_name,
        devices=tuple(d.index if d.index is not None else -1 for d in devices),
        cold_ms=statistics.fmean(cold),
        cold_p50_ms=statistics.median(cold),
        warm_ms=statistics.median(warm),
        limit_ms=load_bound_ms(copied, links, len(devices)),
        copied_bytes=copied,
        predicted_ms=predicted,
        samples=len(cold),
    )
