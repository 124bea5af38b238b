"""Checking a plan's DeepPlan variants against pipelining on the device (`planner/validation.py`)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deepplan_backend.runtime.plan import DHA, LoadSchedule, Plan, PlanVariant
from deepplan_backend.runtime.prepared import PreparedModel, prepare
from planner import validation
from planner.planning import make_plan
from planner.profiler import profile_model
from planner.validation import MARGIN, Verdict, validate_plan

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planned() -> tuple[PreparedModel, Plan]:
    prepared = prepare("tiny-resnet")
    profile = profile_model(prepared, [CPU], repeats=2, warmup=1, progress=False)
    plan = make_plan(profile, [1], "2026-11-27T00:00:00+00:00")
    # a deepplan variant that differs from pipelining whatever the profile said: every other layer by DHA
    n = len(profile.layers)
    odd = LoadSchedule(tuple(DHA if i % 2 else 0 for i in range(n)), 1)
    variants = tuple(PlanVariant("deepplan", 1, odd, 1.0) if v.engine == "deepplan" else v for v in plan.variants)
    return prepared, dataclasses.replace(plan, variants=variants)


def test_verdict_keeps_the_plan_within_the_margin_only() -> None:
    assert Verdict(1, 10.0 * (1 + MARGIN), 10.0).keeps_plan
    assert Verdict(2, 9.0, 10.0).keeps_plan
    slower = Verdict(2, 10.0 * (1 + MARGIN) + 0.01, 10.0)
    assert not slower.keeps_plan
    assert "replaced by the pipeline schedule" in slower.describe() and "x2" in slower.describe()


def test_a_real_check_times_both_schedules_and_leaves_the_device_empty(planned) -> None:
    prepared, plan = planned
    checked, verdicts = validate_plan(plan, prepared, [CPU], warmup=1, repeats=2)
    assert len(verdicts) == 1 and verdicts[0].num_devices == 1
    assert verdicts[0].deepplan_ms > 0 and verdicts[0].pipeline_ms > 0
    assert 0 < verdicts[0].deepplan_setup_ms < verdicts[0].deepplan_ms
    kept = checked.variant("deepplan", 1).schedule
    assert kept in (plan.variant("deepplan", 1).schedule, plan.variant("pipeline", 1).schedule)
    assert kept == plan.variant("deepplan", 1).schedule or not verdicts[0].keeps_plan


def test_a_losing_schedule_is_replaced_by_pipelining_and_keeps_its_prediction(planned, monkeypatch) -> None:
    prepared, plan = planned
    # the timing itself is checked above; here only what the planner does with a loss
    monkeypatch.setattr(validation, "_cold_medians", lambda *a, **k: [(2.0, 0.5), (1.0, 0.4)])
    checked, verdicts = validate_plan(plan, prepared, [CPU])
    pipeline = plan.variant("pipeline", 1)
    assert [v.keeps_plan for v in verdicts] == [False]
    assert (verdicts[0].deepplan_setup_ms, verdicts[0].pipeline_setup_ms) == (0.5, 0.4)
    assert "set-up 0.50 / 0.40 ms" in verdicts[0].describe()
    assert checked.variant("deepplan", 1).schedule == pipeline.schedule
    assert checked.variant("deepplan", 1).predicted_ms == pipeline.predicted_ms
    assert checked.variant("demand", 1) == plan.variant("demand", 1)


def test_variants_already_pipelining_or_beyond_the_devices_are_not_timed(planned, monkeypatch) -> None:
    prepared, plan = planned

    def never(*_a: object, **_k: object) -> list[tuple[float, float]]:
        raise AssertionError("nothing should be timed")

    monkeypatch.setattr(validation, "_cold_medians", never)
    same = dataclasses.replace(
        plan,
        variants=tuple(
            PlanVariant("deepplan", 1, plan.variant("pipeline", 1).schedule, 1.0) if v.engine == "deepplan" else v
            for v in plan.variants
        ),
    )
    assert validate_plan(same, prepared, [CPU]) == (same, [])
    assert validate_plan(plan, prepared, []) == (plan, [])
