"""DeepPlan's dynamic DHA selection (REFERENCE §1): remove pipeline stalls by reading layers from host memory.

Walk the simulated cold start from the first layer on. At the first layer whose execution waits for its own
load, try switching that layer or earlier still-loaded layers to DHA, cheapest first, keeping a switch only if
the predicted latency does not get worse, until that layer no longer waits. Then look for the next stall
after it, to the end of the model. Fewer loaded bytes make every later load arrive sooner, which is how DHA on
an early layer removes a later stall.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from deepplan_backend.runtime.plan import LoadSchedule, ModelProfile, PlanError
from planner.partition import even_byte_split
from planner.simulate import CostModel, copy_saved_ms, copy_scale

DHA_LOAD_FACTOR = 1.5
"""A layer is never a DHA candidate if its DHA time exceeds exec + this x load (original DeepPlan's bound)."""

TOLERANCE_MS = 1e-9
"""A switch that changes the prediction by less than this counts as "not worse"."""

Partitioner = Callable[[ModelProfile, Collection[int], int], LoadSchedule]
"""Builds the schedule for a set of DHA layers over a number of devices (e.g. `even_byte_split`)."""


def is_candidate(profile: ModelProfile, index: int) -> bool:
    """Whether a layer may ever be switched to DHA: its DHA time stays within exec + 1.5 x load."""
    layer = profile.layers[index]
    return layer.dha_exec_ms <= layer.exec_ms + DHA_LOAD_FACTOR * layer.load_ms


def can_pay_off(profile: ModelProfile, index: int, max_scale: float, saved_ms: Sequence[float] | None = None) -> bool:
    """Whether switching a layer could lower the prediction: its DHA penalty is below the copy it saves.

    Reading a layer by DHA takes at most its (contention-scaled) copy off the critical path (`copy_saved_ms`:
    for a small layer inside a chunk, only its bytes, since the chunk's copy still happens) and adds its DHA
    penalty to it, so a penalty at least that large never helps. Pruning these keeps the selection near
    O(stalls x useful candidates) instead of trying every small layer (norms, biases) at every stall.
    """
    layer = profile.layers[index]
    saved = (saved_ms if saved_ms is not None else copy_saved_ms(profile))[index]
    return layer.dha_exec_ms - layer.exec_ms < saved * max_scale


def candidate_rank(
    profile: ModelProfile, index: int, saved_ms: Sequence[float] | None = None
) -> tuple[float, float, int]:
    """Sort key, best first: smallest DHA penalty per millisecond of copy saved, then largest copy saved.

    A negative penalty (DHA faster than in-GPU execution, as for an embedding lookup) ranks first. A layer
    with nothing to copy saves no copy time, so it ranks last.
    """
    layer = profile.layers[index]
    saved = (saved_ms if saved_ms is not None else copy_saved_ms(profile))[index]
    penalty = layer.dha_exec_ms - layer.exec_ms
    ratio = penalty / saved if saved > 0 else float("inf")
    return (ratio, -saved, index)


def _stall_at(cost: CostModel, schedule: LoadSchedule, begin: int) -> tuple[int | None, float]:
    """First stalled layer at or after `begin` under `schedule`, and the predicted total."""
    result = cost.timeline(schedule.sources)
    return result.first_stall(begin), result.total_ms


def select_dha_layers(
    profile: ModelProfile,
    num_devices: int,
    partition: Partitioner = even_byte_split,
    initial_dha: Collection[int] = (),
) -> LoadSchedule:
    """Choose the DHA layers for `num_devices` devices and return the schedule `partition` gives them.

    `partition` re-splits the loaded layers among the devices after every switch (the even byte split by
    default, as in the original). `initial_dha` seeds the DHA set (empty: start from plain pipelining). The
    returned schedule is never predicted slower than the seed's.
    """
    cost = CostModel(profile)
    if num_devices < 1:
        raise PlanError(f"{profile.key.model}: DHA selection needs at least one device, got {num_devices}")
    dha = set(initial_dha)
    max_scale = max(copy_scale(profile, k) for k in range(1, num_devices + 1))
    saved = copy_saved_ms(profile)
    schedule = partition(profile, dha, num_devices)
    stall, total = _stall_at(cost, schedule, 0)
    while stall is not None:
        stalled = stall
        candidates = sorted(
            (
                j
                for j in range(stalled + 1)
                if j not in dha and is_candidate(profile, j) and can_pay_off(profile, j, max_scale, saved)
            ),
            key=lambda j: candidate_rank(profile, j, saved),
        )
        for j in candidates:
            trial = partition(profile, dha | {j}, num_devices)
            trial_total = cost.total(trial.sources)
            if trial_total > total + TOLERANCE_MS:
                continue
            dha.add(j)
            schedule, total = trial, trial_total
            if j == stalled:
                break  # a DHA layer is ready at t=0, so this stall is gone
            now, _ = _stall_at(cost, schedule, stalled)
            if now != stalled:
                break
        stall, total = _stall_at(cost, schedule, stalled + 1)
    return schedule
