"""Plan view: header, ratios, per-layer tables."""

from __future__ import annotations

import pytest

from deepplan_backend.runtime.plan import (
    DHA,
    LayerProfile,
    LinkProfile,
    LoadSchedule,
    Plan,
    PlanError,
    PlanKey,
    PlanVariant,
)
from planner.plan_view import format_plan, human_bytes

KEY = PlanKey("bert-base", 1, 384, "float32", "NVIDIA H200")


def make() -> Plan:
    layers = (
        LayerProfile(0, "embeddings.word_embeddings", 93_763_584, 1.73, 0.018, 0.034),
        LayerProfile(1, "encoder.layer.0.attention.self.query", 2_362_368, 0.05, 0.03, 1.04),
        LayerProfile(2, "pooler.dense", 2_362_368, 0.05, 0.03, 1.04),
    )
    variants = (
        PlanVariant("demand", 1, LoadSchedule.all_on_target(3), 8.0),
        PlanVariant("pipeline", 2, LoadSchedule((0, 1, 1), 2), 4.0),
        PlanVariant("deepplan", 2, LoadSchedule((DHA, 0, 1), 2), 2.0),
    )
    return Plan(KEY, "f00dfeed", layers, variants, LinkProfile(54.0, 390.0, {2: 81.0}), 5.5, "2025-06-01")


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(93_763_584) == "89.4 MiB"
    assert human_bytes(3 << 40) == "3.0 TiB"
    assert human_bytes(5 << 50) == "5120.0 TiB"


def test_header_has_identity_predictions_and_ratios():
    text = format_plan(make())
    assert "plan for bert-base: batch 1, seq 384, float32, NVIDIA H200" in text
    assert "fingerprint f00dfeed" in text
    assert "concurrent host->GPU {2: 81} GB/s" in text
    lines = text.splitlines()
    demand = next(line for line in lines if line.strip().startswith("demand x1"))
    deep = next(line for line in lines if line.strip().startswith("deepplan x2"))
    assert "8.000 ms" in demand and "1.00x vs demand" in demand
    assert "2.000 ms" in deep and "4.00x vs demand" in deep and "DHA layers    1" in deep


def test_default_table_is_deepplan_with_decisions_and_slots():
    text = format_plan(make())
    rows = [line for line in text.splitlines() if "embeddings.word_embeddings" in line or "pooler.dense" in line]
    assert len(rows) == 2  # only the deepplan table by default
    emb, pooler = rows
    assert "89.4 MiB" in emb and " DHA " in emb
    assert " load " in pooler and pooler.split()[-2] == "1"  # slot column, then wait
    assert "deepplan x2: predicted 2.000 ms" in text


def test_chosen_variants_and_missing_variant():
    text = format_plan(make(), chosen=[("pipeline", 2), ("demand", 1)])
    assert "pipeline x2: predicted" in text and "demand x1: predicted" in text
    assert "deepplan x2: predicted" not in text
    with pytest.raises(PlanError, match="no deepplan variant for 4 device"):
        format_plan(make(), chosen=[("deepplan", 4)])


def test_made_plan_survives_the_repository_and_shows(tmp_path):
    from deepplan_backend.runtime.plan import ModelProfile
    from deepplan_backend.runtime.plan_repository import load_plan, save_plan
    from planner.planning import make_plan

    rows = [("embeddings.word", 93_763_584, 0.018, 0.034)] + [
        (f"layer{i}.dense", 9_437_184, 0.08, 3.2) for i in range(10)
    ]
    layers = tuple(LayerProfile(i, n, b, b / 54e6, ex, dha) for i, (n, b, ex, dha) in enumerate(rows))
    profile = ModelProfile(KEY, "f00dfeed", layers, LinkProfile(54.0, 390.0, {2: 81.0, 4: 132.0}), 5.5)
    plan = make_plan(profile, [1, 2, 4], created_at="2025-06-01")
    save_plan(tmp_path, plan)
    loaded = load_plan(tmp_path, KEY, "f00dfeed")
    assert loaded == plan
    text = format_plan(loaded)
    assert text.count(": predicted ") == 3  # one table per deepplan variant
    assert "deepplan x4" in text and "embeddings.word" in text
