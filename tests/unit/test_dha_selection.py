"""DeepPlan's dynamic DHA selection and the whole-plan maker."""

from __future__ import annotations

import random
import time

import pytest

from deepplan_backend.runtime.plan import DHA, LayerProfile, LinkProfile, ModelProfile, PlanError, PlanKey
from planner.dha_selection import candidate_rank, is_candidate, select_dha_layers
from planner.partition import even_byte_split
from planner.planning import make_plan, profile_of
from planner.simulate import predict_demand, simulate

KEY = PlanKey("toy", 1, 8, "float32", "Test GPU")
CONCURRENT = {2: 81.0, 3: 110.0, 4: 132.0}


def profile(rows, *, h2d=54.0, p2p=390.0, concurrent=None) -> ModelProfile:
    """rows: (name, nbytes, exec_ms, dha_exec_ms) per layer; load_ms follows from the bytes at h2d."""
    layers = tuple(
        LayerProfile(i, name, nbytes, nbytes / (h2d * 1e9) * 1e3, ex, dha)
        for i, (name, nbytes, ex, dha) in enumerate(rows)
    )
    return ModelProfile(KEY, "fp", layers, LinkProfile(h2d, p2p, concurrent or {}), warm_ms=1.0)


def bert_like(blocks: int = 12) -> ModelProfile:
    """An embedding table first (94 MB, cheap by DHA), then GEMM blocks (DHA far too slow)."""
    rows = [("embeddings.word", 93_763_584, 0.018, 0.034), ("embeddings.position", 1_572_864, 0.01, 0.012)]
    for b in range(blocks):
        rows += [
            (f"layer{b}.attn.qkv", 7_080_960, 0.06, 2.5),
            (f"layer{b}.attn.out", 2_362_368, 0.03, 1.0),
            (f"layer{b}.norm", 6_144, 0.01, 0.012),
            (f"layer{b}.ffn.up", 9_449_472, 0.08, 3.2),
            (f"layer{b}.ffn.down", 9_440_256, 0.08, 3.2),
        ]
    return profile(rows, concurrent=CONCURRENT)


def test_huge_early_embedding_goes_to_dha():
    p = bert_like()
    for devices in (1, 2, 4):
        s = select_dha_layers(p, devices)
        assert 0 in s.dha_layers, devices
        assert s.num_devices == devices
        base = simulate(p, even_byte_split(p, (), devices)).total_ms
        assert simulate(p, s).total_ms < base


def test_gemm_with_huge_dha_time_is_never_chosen():
    p = bert_like()
    gemms = {i for i, layer in enumerate(p.layers) if "attn" in layer.name or "ffn" in layer.name}
    assert not any(is_candidate(p, i) for i in gemms)
    for devices in (1, 2, 3, 4):
        assert not gemms & set(select_dha_layers(p, devices).dha_layers)


def test_candidate_bound_is_exec_plus_one_and_a_half_loads():
    p = profile([("a", 54_000_000, 1.0, 2.5), ("b", 54_000_000, 1.0, 2.51)])  # load 1 ms each
    assert is_candidate(p, 0)
    assert not is_candidate(p, 1)


def test_rank_prefers_small_penalty_per_load_then_large_load():
    p = profile([("slow", 54_000_000, 0.1, 0.6), ("free", 5_400_000, 0.1, 0.1), ("big", 108_000_000, 0.1, 1.1)])
    order = sorted(range(3), key=lambda i: candidate_rank(p, i))
    assert order == [1, 2, 0]  # free first; slow and big tie on penalty/load, the larger load wins
    assert candidate_rank(p, 1)[0] == 0.0


def test_no_stall_means_no_dha():
    # layer 1's load hides behind layer 0; layer 0's tiny wait is not worth DHA (slower than exec + 1.5 load)
    p = profile([("a", 1_000, 5.0, 5.1), ("b", 1_000, 5.0, 5.0)])
    assert select_dha_layers(p, 1).dha_layers == ()


def test_switch_that_makes_things_worse_is_not_kept():
    # DHA of the only layer saves 1 ms of load but costs 1.4 ms extra exec: worse, must stay loaded
    p = profile([("a", 54_000_000, 0.1, 1.5)])
    assert is_candidate(p, 0)
    assert select_dha_layers(p, 1).dha_layers == ()


def test_later_stall_is_fixed_by_earlier_layer():
    # layer 0 is a big table whose DHA is nearly free; layer 1 is a GEMM that stalls behind it
    p = profile([("table", 108_000_000, 0.01, 0.02), ("gemm", 5_400_000, 0.2, 50.0)])
    s = select_dha_layers(p, 1)
    assert s.sources == (DHA, 0)


def test_bad_device_count():
    with pytest.raises(PlanError, match="toy: DHA selection needs at least one device"):
        select_dha_layers(bert_like(1), 0)


def test_make_plan_variants_and_ordering():
    p = bert_like()
    plan = make_plan(p, [1, 2, 4, 2], created_at="2025-01-01T00:00:00Z")
    got = [(v.engine, v.num_devices) for v in plan.variants]
    assert got == [
        ("demand", 1),
        ("pipeline", 1),
        ("deepplan", 1),
        ("pipeline", 2),
        ("deepplan", 2),
        ("pipeline", 4),
        ("deepplan", 4),
    ]
    assert plan.variant("demand", 1).predicted_ms == pytest.approx(predict_demand(p).total_ms)
    for n in (1, 2, 4):
        pipe, deep = plan.variant("pipeline", n), plan.variant("deepplan", n)
        assert pipe.schedule.dha_layers == ()
        assert simulate(p, pipe.schedule).total_ms == pytest.approx(pipe.predicted_ms)
        assert simulate(p, deep.schedule).total_ms == pytest.approx(deep.predicted_ms)
        assert deep.predicted_ms <= pipe.predicted_ms
        assert 0 in deep.schedule.dha_layers
    assert plan.variant("deepplan", 4).predicted_ms < plan.variant("deepplan", 1).predicted_ms
    assert plan.created_at == "2025-01-01T00:00:00Z"
    assert profile_of(plan) == p
    with pytest.raises(PlanError, match="device counts must be within"):
        make_plan(p, [0], created_at="")


@pytest.mark.parametrize("seed", range(15))
def test_deepplan_never_predicted_worse_than_pipeline(seed):
    rng = random.Random(seed)
    rows = []
    for i in range(rng.randint(1, 40)):
        nbytes = rng.choice([rng.randint(0, 10**5), rng.randint(10**6, 10**8)])
        ex = rng.uniform(0.0, 0.3)
        rows.append((f"l{i}", nbytes, ex, ex + rng.uniform(-0.05, 2.0) if ex > 0.05 else ex))
    p = profile(rows, concurrent=CONCURRENT)
    plan = make_plan(p, [1, 2, 3], created_at="")
    for n in (1, 2, 3):
        assert plan.variant("deepplan", n).predicted_ms <= plan.variant("pipeline", n).predicted_ms + 1e-9


def test_planning_a_large_model_is_fast():
    p = bert_like(24)  # ~120 layers, BERT-Large-sized table
    t0 = time.perf_counter()
    make_plan(p, [1, 2, 4], created_at="")
    assert time.perf_counter() - t0 < 10.0
