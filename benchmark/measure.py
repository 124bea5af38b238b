"""Measure cold and warm latency of one (model, engine, device set), next to its load-bound limit.

A cold sample is: evict (device bytes back to the driver), then one request that provisions while it runs,
timed on the host from the request to its output on the CPU. The first samples pay one-time costs (kernel
libraries, allocator) and are discarded as warm-up. Every output is compared with the first configuration's
first output (On-Demand in the tables: a plain copy-then-run of the same weights), so a fast wrong answer shows.
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
from deepplan_backend.runtime.zoo import load_model


@dataclass(frozen=True)
class Measurement:
    """Latencies in ms: medians, with `cold_mean_ms` the seed's "average".

    `limit_ms` is the bytes copied over the aggregate H2D bandwidth of the devices used.
    """

    model: str
    engine: str
    devices: tuple[int, ...]
    cold_ms: float
    cold_mean_ms: float
    warm_ms: float
    limit_ms: float
    copied_bytes: int
    predicted_ms: float | None
    samples: int
    max_abs_diff: float
    """Largest |output - reference| over every cold and warm output of this configuration (see the module doc)."""
    graph_replayed: bool = False
    """Whether the cold starts replayed a captured CUDA graph (False: eager, by choice or because capture failed)."""
    cold_setup_ms: float = 0.0
    """Median host set-up of the cold starts: request to the forward's first launch (mapping, issuing, binding)."""
    reference_finite: bool = True
    """Whether the reference output (the first configuration's) is finite: a model that overflows in a dtype (e.g.
    a deep ResNet with random weights in float16) cannot tell right from wrong."""
    plain_max_abs_diff: float | None = None
    """Largest |output - the plain transformers model's output| over this configuration's outputs (None: not given)."""


def load_bound_ms(copied_bytes: int, links: LinkProfile, num_devices: int) -> float:
    """Time to move `copied_bytes` at the aggregate host-to-GPU bandwidth of `num_devices` links."""
    aggregate = links.concurrent_h2d_gbps.get(num_devices, links.h2d_gbps * num_devices)
    return copied_bytes / (aggregate * 1e9) * 1e3


@dataclass(frozen=True)
class Run:
    """One configuration to measure: an engine mode over a device list, and those devices' bandwidths."""

    engine: str
    devices: tuple[torch.device, ...]
    links: LinkProfile
    graphs: bool = False


def measure_interleaved(
    prepared: PreparedModel,
    runs: Sequence[Run],
    plan: Plan | None,
    batch_size: int = 1,
    seq_len: int | None = None,
    repeats: int = 10,
    warmup: int = 3,
    plain_output: torch.Tensor | None = None,
) -> list[Measurement]:
    """Measure several configurations of one model, taking their samples in turn.

    Round-robin sampling spreads slow phases of a shared machine (other tenants, clock changes) over every
    configuration alike, so their ratios stay meaningful even when absolute times drift. `plain_output` (see
    `plain_model_output`) adds each configuration's distance from the plain model.
    """
    inputs = prepared.model.example_inputs(batch_size, seq_len)
    engines, schedules = [], []
    for run in runs:
        schedules.append(schedule_for(run.engine, len(run.devices), prepared.table.nbytes, plan))
        engines.append(ColdStartEngine(prepared.model, prepared.store, list(run.devices), graphs=run.graphs))
    cold: list[list[float]] = [[] for _ in runs]
    warm: list[list[float]] = [[] for _ in runs]
    setup: list[list[float]] = [[] for _ in runs]
    copied = [0] * len(runs)
    diff = [0.0] * len(runs)
    plain = [0.0] * len(runs)
    reference: torch.Tensor | None = None
    try:
        for k in range(warmup + repeats):
            for i, (engine, (schedule, overlap)) in enumerate(zip(engines, schedules, strict=True)):
                engine.evict()
                first = engine.infer(inputs, schedule, overlap)
                second = engine.infer(inputs, schedule, overlap)
                engine.evict()  # engines of one model share its module: only one may be bound at a time
                if reference is None:
                    reference = first.output.float()
                for result in (first, second):
                    diff[i] = _max_gap(diff[i], result.output, reference)
                    if plain_output is not None:
                        plain[i] = _max_gap(plain[i], result.output, plain_output)
                if k >= warmup:
                    cold[i].append(first.latency_ms)
                    warm[i].append(second.latency_ms)
                    setup[i].append(first.setup_ms)
                    copied[i] = first.copied_bytes
        # A graph is captured at an engine's first warm request, so by now it is settled whether cold starts replay one.
        replayed = [e.replays_graph(schedule, inputs) for e, (schedule, _) in zip(engines, schedules, strict=True)]
    finally:
        for engine in engines:
            engine.close()
    finite = reference is None or bool(torch.isfinite(reference).all())
    return [
        Measurement(
            model=prepared.model.name,
            engine=run.engine,
            devices=tuple(d.index if d.index is not None else -1 for d in run.devices),
            cold_ms=statistics.median(cold[i]),
            cold_mean_ms=statistics.fmean(cold[i]),
            warm_ms=statistics.median(warm[i]),
            limit_ms=load_bound_ms(copied[i], run.links, len(run.devices)),
            copied_bytes=copied[i],
            predicted_ms=plan.variant(run.engine, len(run.devices)).predicted_ms if plan is not None else None,
            samples=len(cold[i]),
            max_abs_diff=diff[i],
            graph_replayed=replayed[i],
            cold_setup_ms=statistics.median(setup[i]),
            reference_finite=finite,
            plain_max_abs_diff=plain[i] if plain_output is not None else None,
        )
        for i, run in enumerate(runs)
    ]


def _max_gap(so_far: float, output: torch.Tensor, reference: torch.Tensor) -> float:
    """max(so_far, |output - reference|.max()), where a NaN, once seen, stays (max() would drop it)."""
    gap = (output.float() - reference).abs().max().item() if reference.numel() else 0.0
    return gap if so_far == so_far and not gap <= so_far else so_far


def plain_model_output(name: str, dtype: str, device: torch.device, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plain `transformers` model's output for `inputs` on `device` (FP32, on the CPU), then freed.

    Built like the engines' model (same zoo name or checkpoint folder, dtype and seed: identical weights) and run
    the ordinary way, `.to(device)` and a forward: the output every engine must reproduce.
    """
    plain = load_model(name, dtype=dtype).module.to(device)
    with torch.inference_mode():
        out = plain(**{k: v.to(device) for k, v in inputs.items()}).float().cpu()
    del plain
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the engines' arenas map device memory themselves
    return out
