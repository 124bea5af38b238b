"""Turn a model profile into a Plan: one predicted variant per engine mode and device count."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from deepplan_backend.runtime.plan import LoadSchedule, ModelProfile, Plan, PlanError, PlanVariant
from planner.dha_selection import Partitioner, select_dha_layers
from planner.partition import best_partition, byte_shares, even_byte_split, weighted_split
from planner.simulate import CostModel, predict_demand

ALTERNATIONS = 2
"""Rounds of (DHA selection, partition search); a second round sometimes helps, a third rarely would."""

MAX_DEVICES = 64
"""More device slots than any host has; a larger count is a typo, not a plan."""


def _shares_partitioner(shares: Sequence[float]) -> Partitioner:
    """A partitioner that keeps the given byte shares per slot whatever the DHA set (round two's split)."""

    def split(profile: ModelProfile, dha: Collection[int], num_devices: int) -> LoadSchedule:
        return weighted_split(profile, dha, shares)

    return split


def plan_deepplan(profile: ModelProfile, num_devices: int) -> tuple[LoadSchedule, float]:
    """DHA + PT schedule for `num_devices` devices and its predicted latency.

    Round one selects DHA layers over the even byte split (the original's rule), then searches the partition
    of the remaining loaded layers. Later rounds re-select DHA from scratch over a split that keeps the found
    partition's byte shares, then search the partition again. The best schedule seen is returned, and plain
    pipelining over the even split is the first one seen, so DeepPlan is never predicted worse than it.
    """
    cost = CostModel(profile)
    best = even_byte_split(profile, (), num_devices)
    best_ms = cost.total(best.sources)
    partitioner: Partitioner = even_byte_split
    for _ in range(ALTERNATIONS):
        selected = select_dha_layers(profile, num_devices, partition=partitioner)
        schedule = best_partition(profile, selected.dha_layers, num_devices, cost)
        total = cost.total(schedule.sources)
        if total < best_ms:
            best, best_ms = schedule, total
        if num_devices == 1:
            break  # nothing to partition, so another round would repeat this one
        partitioner = _shares_partitioner(byte_shares(profile, schedule))
    return best, best_ms


def make_plan(profile: ModelProfile, device_counts: Sequence[int], created_at: str) -> Plan:
    """Plan ("demand", 1), then ("pipeline", n) and ("deepplan", n) for each n in `device_counts`.

    `pipeline` splits the load evenly by bytes (the original's PT rule); `deepplan` uses DHA selection and the
    searched partition. Duplicate device counts are planned once.
    """
    cost = CostModel(profile)  # also checks the profile, naming the model and the bad field
    counts = list(dict.fromkeys(device_counts))
    bad = [n for n in counts if not 1 <= n <= MAX_DEVICES]
    if bad:
        raise PlanError(f"{profile.key.model}: device counts must be within 1..{MAX_DEVICES}, got {bad}")
    num_layers = len(profile.layers)
    variants = [
        PlanVariant(
            engine="demand",
            num_devices=1,
            schedule=LoadSchedule.all_on_target(num_layers),
            predicted_ms=predict_demand(profile).total_ms,
        )
    ]
    for n in counts:
        pipeline = even_byte_split(profile, (), n)
        variants.append(PlanVariant("pipeline", n, pipeline, cost.total(pipeline.sources)))
        schedule, total = plan_deepplan(profile, n)
        variants.append(PlanVariant("deepplan", n, schedule, total))
    return Plan(
        key=profile.key,
        fingerprint=profile.fingerprint,
        layers=profile.layers,
        variants=tuple(variants),
        links=profile.links,
        warm_ms=profile.warm_ms,
        created_at=created_at,
    )


def profile_of(plan: Plan) -> ModelProfile:
    """The model profile a plan was made from (a plan file stores all of it)."""
    return ModelProfile(
        key=plan.key, fingerprint=plan.fingerprint, layers=plan.layers, links=plan.links, warm_ms=plan.warm_ms
    )
