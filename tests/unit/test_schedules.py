"""Engine mode -> load schedule (`runtime/schedules.py`)."""

from __future__ import annotations

import random

import pytest

from deepplan_backend.runtime.plan import (
    DHA,
    ENGINES,
    LayerProfile,
    LinkProfile,
    LoadSchedule,
    Plan,
    PlanError,
    PlanKey,
    PlanVariant,
)
from deepplan_backend.runtime.schedules import even_split, schedule_for

NBYTES = (4096, 512, 1024, 8192, 256, 2048, 2048, 768)


def _plan(num_layers: int, variants: list[tuple[str, LoadSchedule]]) -> Plan:
    layers = tuple(LayerProfile(i, f"l{i}", 256, 0.1, 0.2, 0.3) for i in range(num_layers))
    return Plan(
        key=PlanKey("tiny-bert", 1, 16, "float32", "cpu"),
        fingerprint="0123456789abcdef",
        layers=layers,
        variants=tuple(PlanVariant(e, s.num_devices, s, 1.5) for e, s in variants),
        links=LinkProfile(h2d_gbps=10.0, p2p_gbps=20.0),
        warm_ms=1.0,
    )


def test_demand_copies_everything_without_overlap() -> None:
    schedule, overlap = schedule_for("demand", 1, NBYTES, None)
    assert schedule == LoadSchedule.all_on_target(len(NBYTES))
    assert overlap is False


def test_demand_refuses_several_devices() -> None:
    with pytest.raises(PlanError, match="one device"):
        schedule_for("demand", 2, NBYTES, None)


def test_pipeline_on_one_device_overlaps_everything_on_target() -> None:
    schedule, overlap = schedule_for("pipeline", 1, NBYTES, None)
    assert schedule == LoadSchedule.all_on_target(len(NBYTES)) and overlap is True


@pytest.mark.parametrize("devices", [2, 3, 4])
def test_pipeline_on_several_devices_is_the_even_split(devices: int) -> None:
    schedule, overlap = schedule_for("pipeline", devices, NBYTES, None)
    assert overlap is True
    assert schedule == even_split(NBYTES, devices)
    assert schedule.num_devices == devices


def test_plans_are_not_needed_for_demand_and_pipeline_even_if_given() -> None:
    plan = _plan(len(NBYTES), [("deepplan", LoadSchedule((DHA,) * len(NBYTES), 1))])
    assert schedule_for("demand", 1, NBYTES, plan)[0] == LoadSchedule.all_on_target(len(NBYTES))
    assert schedule_for("pipeline", 1, NBYTES, plan)[0] == LoadSchedule.all_on_target(len(NBYTES))


def test_deepplan_without_plan_names_the_planner_command() -> None:
    with pytest.raises(PlanError) as info:
        schedule_for("deepplan", 1, NBYTES, None)
    assert "python3 -m planner" in str(info.value)


def test_deepplan_follows_its_plan() -> None:
    n = len(NBYTES)
    one = LoadSchedule(tuple(DHA if i == 1 else 0 for i in range(n)), 1)
    two = LoadSchedule((0, 0, 0, 1, 1, DHA, 1, 1), 2)
    plan = _plan(n, [("deepplan", one), ("deepplan", two), ("pipeline", LoadSchedule.all_on_target(n))])
    assert schedule_for("deepplan", 1, NBYTES, plan) == (one, True)
    assert schedule_for("deepplan", 2, NBYTES, plan) == (two, True)


def test_deepplan_plan_without_that_device_count() -> None:
    n = len(NBYTES)
    plan = _plan(n, [("deepplan", LoadSchedule.all_on_target(n))])
    with pytest.raises(PlanError) as info:
        schedule_for("deepplan", 2, NBYTES, plan)
    message = str(info.value)
    assert "deepplanx1" in message and "python3 -m planner" in message


def test_deepplan_plan_for_another_layer_count() -> None:
    plan = _plan(3, [("deepplan", LoadSchedule.all_on_target(3))])
    with pytest.raises(PlanError, match=r"covers 3 layers, model has 8"):
        schedule_for("deepplan", 1, NBYTES, plan)


def test_unknown_engine() -> None:
    with pytest.raises(PlanError) as info:
        schedule_for("clockwork", 1, NBYTES, None)
    for engine in ENGINES:
        assert engine in str(info.value)


def _runs(sources: tuple[int, ...]) -> list[int]:
    out: list[int] = []
    for s in sources:
        if not out or out[-1] != s:
            out.append(s)
    return out


@pytest.mark.parametrize("devices", [1, 2, 3, 4])
def test_even_split_is_contiguous_target_first(devices: int) -> None:
    schedule = even_split(NBYTES, devices)
    assert schedule.num_devices == devices
    assert len(schedule.sources) == len(NBYTES)
    assert DHA not in schedule.sources
    assert schedule.sources[0] == 0
    assert list(schedule.sources) == sorted(schedule.sources)  # contiguous runs in slot order
    assert _runs(schedule.sources) == list(range(devices))  # every slot gets a run here


def test_even_split_balances_bytes() -> None:
    rng = random.Random(7)
    for _ in range(50):
        nbytes = [rng.randrange(256, 1 << 20, 256) for _ in range(rng.randrange(4, 60))]
        devices = rng.randrange(1, 5)
        schedule = even_split(nbytes, devices)
        assert list(schedule.sources) == sorted(schedule.sources)
        share = sum(nbytes) / devices
        for slot in range(devices):
            got = sum(n for n, s in zip(nbytes, schedule.sources, strict=True) if s == slot)
            assert abs(got - share) <= max(nbytes), (nbytes, devices, slot)


def test_even_split_of_uniform_layers() -> None:
    assert even_split([1] * 8, 2).sources == (0,) * 4 + (1,) * 4
    assert even_split([1] * 8, 4).sources == (0, 0, 1, 1, 2, 2, 3, 3)


def test_even_split_with_more_devices_than_layers_stays_valid() -> None:
    schedule = even_split([100, 100], 4)
    assert schedule.num_devices == 4
    assert len(schedule.sources) == 2 and DHA not in schedule.sources
    assert list(schedule.sources) == sorted(schedule.sources)


def test_even_split_gives_the_target_the_first_layer_even_when_it_is_large() -> None:
    schedule = even_split([600, 100, 100, 100, 100], 4)
    assert schedule.sources[0] == 0
