"""Which `LoadSchedule` an engine mode uses on a given number of devices.

`demand` and `pipeline` need no plan (pipeline splits bytes evenly across devices, the original PT rule);
`deepplan` follows its plan's DHA choice and partition.
"""

from __future__ import annotations

from collections.abc import Sequence

from .plan import ENGINES, LoadSchedule, Plan, PlanError


def even_split(nbytes: Sequence[int], num_devices: int) -> LoadSchedule:
    """Every layer copied; contiguous runs of about equal bytes per device, the target taking the first run."""
    # The planner owns partition rules: one definition of the split and of cuts -> per-layer sources.
    from planner.partition import sources_from_cuts, weighted_cuts

    layers = range(len(nbytes))
    return LoadSchedule(
        tuple(sources_from_cuts(len(nbytes), layers, weighted_cuts(nbytes, [1.0] * num_devices))), num_devices
    )


def schedule_for(engine: str, num_devices: int, nbytes: Sequence[int], plan: Plan | None) -> tuple[LoadSchedule, bool]:
    """The schedule for `engine` over `num_devices`, and whether copies overlap execution.

    Raises PlanError when `deepplan` is asked for without a plan, or the plan lacks that device count.
    """
    if engine not in ENGINES:
        raise PlanError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "demand":
        if num_devices != 1:
            raise PlanError("demand copies over the target's own link only; give one device")
        return LoadSchedule.all_on_target(len(nbytes)), False
    if engine == "pipeline":
        if num_devices == 1:
            return LoadSchedule.all_on_target(len(nbytes)), True
        return even_split(nbytes, num_devices), True
    if plan is None:
        raise PlanError("the deepplan engine needs a plan: run `python3 -m planner -m <model> -p <plan repo>` first")
    schedule = plan.variant("deepplan", num_devices).schedule
    if len(schedule.sources) != len(nbytes):
        raise PlanError(f"plan for {plan.key.model} covers {len(schedule.sources)} layers, model has {len(nbytes)}")
    return schedule, True
