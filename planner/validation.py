"""Check a plan's DeepPlan variants against plain pipelining on the devices themselves.

The simulator picks DHA layers and the PT split from per-layer profiles taken one effect at a time. What it
cannot see — DHA reads slowed by copies running at the same time, a peer GPU's issue cost, a ResNet's many DHA
layers cutting its copies into small pieces — can turn a predicted gain into a real loss (seen on 4 x H200:
ResNet-50 DHA+PT 2.28 ms against 1.77 ms for plain pipelining). Every deepplan variant whose schedule differs
from the pipeline variant's is therefore timed against it, on the same devices, in alternating cold starts;
one slower by more than `MARGIN` is replaced by the pipeline schedule, which is always a valid DeepPlan
schedule (no DHA, the even split). Predictions stay the simulator's: they are what the plan is judged by.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Sequence

import torch

from deepplan_backend.runtime.engine import ColdStartEngine
from deepplan_backend.runtime.plan import LoadSchedule, Plan, PlanVariant
from deepplan_backend.runtime.prepared import PreparedModel
from planner.profiler import cold_starts

MARGIN = 0.03
"""A DeepPlan schedule is kept unless its median cold start is this much slower than pipelining's: within it,
the two are the same to the noise of a few cold starts, and the planner's choice stands."""

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of timing one deepplan variant against the pipeline variant on the same devices."""

    num_devices: int
    deepplan_ms: float
    pipeline_ms: float
    deepplan_setup_ms: float = 0.0
    """Median host set-up (request to first launch) of the deepplan cold starts; tells host cost from GPU time."""
    pipeline_setup_ms: float = 0.0

    @property
    def keeps_plan(self) -> bool:
        """Whether the planned schedule stays (not slower than pipelining beyond the margin)."""
        return self.deepplan_ms <= self.pipeline_ms * (1.0 + MARGIN)

    def describe(self) -> str:
        """One line for the planner's output."""
        outcome = "kept" if self.keeps_plan else "replaced by the pipeline schedule"
        return (
            f"deepplan x{self.num_devices}: measured {self.deepplan_ms:.3f} ms vs pipeline "
            f"{self.pipeline_ms:.3f} ms (set-up {self.deepplan_setup_ms:.2f} / {self.pipeline_setup_ms:.2f} ms) "
            f"-> {outcome}"
        )


def _cold_medians(
    engine: ColdStartEngine,
    inputs: dict[str, torch.Tensor],
    schedules: Sequence[LoadSchedule],
    warmup: int,
    repeats: int,
) -> list[tuple[float, float]]:
    """Median cold-start latency and host set-up of each schedule (sampled in alternation, see `cold_starts`)."""
    columns = cold_starts(engine, inputs, schedules, warmup, repeats)
    return [
        (
            statistics.median(r.latency_ms for r in column),
            statistics.median(r.setup_ms for r in column),
        )
        for column in columns
    ]


def validate_plan(
    plan: Plan,
    prepared: PreparedModel,
    devices: Sequence[torch.device],
    batch_size: int = 1,
    seq_len: int | None = None,
    graphs: bool = False,
    warmup: int = 2,
    repeats: int = 5,
) -> tuple[Plan, list[Verdict]]:
    """Time each deepplan variant against pipelining on `devices[:n]` and replace the ones that lose.

    Returns the (possibly) updated plan and one verdict per variant timed; variants whose schedule already is
    the pipeline schedule, or that need more devices than given, are not timed. The devices are left empty.
    """
    inputs = prepared.model.example_inputs(batch_size, seq_len)
    variants = list(plan.variants)
    verdicts: list[Verdict] = []
    for pos, variant in enumerate(variants):
        if variant.engine != "deepplan" or variant.num_devices > len(devices):
            continue
        pipeline = plan.variant("pipeline", variant.num_devices)
        if variant.schedule == pipeline.schedule:
            continue
        engine = ColdStartEngine(prepared.model, prepared.store, list(devices[: variant.num_devices]), graphs=graphs)
        try:
            (deep_ms, deep_setup), (pipe_ms, pipe_setup) = _cold_medians(
                engine, inputs, [variant.schedule, pipeline.schedule], warmup, repeats
            )
        finally:
            engine.close()
        verdict = Verdict(variant.num_devices, deep_ms, pipe_ms, deep_setup, pipe_setup)
        verdicts.append(verdict)
        log.info("%s: %s", plan.key.model, verdict.describe())
        if not verdict.keeps_plan:
            variants[pos] = PlanVariant("deepplan", variant.num_devices, pipeline.schedule, pipeline.predicted_ms)
    return dataclasses.replace(plan, variants=tuple(variants)), verdicts
