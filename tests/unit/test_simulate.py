"""Simulator against hand-computed timelines."""

from __future__ import annotations

import dataclasses
import math

import pytest

from deepplan_backend.runtime.chunking import CHUNK_BYTES
from deepplan_backend.runtime.plan import (
    DHA,
    LayerProfile,
    LinkProfile,
    LoadSchedule,
    ModelProfile,
    PlanError,
    PlanKey,
)
from planner.simulate import (
    CostModel,
    copy_overhead_ms,
    copy_saved_ms,
    peer_chunk_count,
    predict,
    predict_demand,
    simulate,
)

KEY = PlanKey("toy", 1, 8, "float32", "Test GPU")
CHUNK = CHUNK_BYTES
"""A layer of this size is a chunk of its own, so its copy costs exactly its profiled load time."""


def profile(rows, *, h2d=10.0, p2p=100.0, concurrent=None) -> ModelProfile:
    """rows: (nbytes, load_ms, exec_ms, dha_exec_ms) per layer."""
    layers = tuple(LayerProfile(i, f"l{i}", *row) for i, row in enumerate(rows))
    return ModelProfile(KEY, "fp", layers, LinkProfile(h2d, p2p, concurrent or {}), warm_ms=1.0)


def test_single_link_pipeline_matches_hand_timeline():
    # loads 2,1,3 on one queue -> ready 2,3,6; exec 1 each -> starts 2,3,6 ; ends 3,4,7
    p = profile([(CHUNK, 2.0, 1.0, 9.0), (CHUNK, 1.0, 1.0, 9.0), (CHUNK, 3.0, 1.0, 9.0)])
    r = simulate(p, LoadSchedule.all_on_target(3))
    assert r.ready_ms == (2.0, 3.0, 6.0)
    assert r.start_ms == (2.0, 3.0, 6.0)
    assert r.end_ms == (3.0, 4.0, 7.0)
    assert r.total_ms == 7.0
    assert r.first_stall() == 0
    assert r.first_stall(1) == 2
    assert r.stall_ms(2) == pytest.approx(2.0)
    assert r.total_stall_ms == pytest.approx(4.0)


def test_dha_layer_ready_at_zero_and_uses_dha_time():
    p = profile([(10, 5.0, 1.0, 1.5), (10, 1.0, 1.0, 9.0)])
    r = simulate(p, LoadSchedule((DHA, 0), 1))
    # layer 0 by DHA: 0..1.5 ; layer 1 copy alone on the link: ready 1.0 -> starts 1.5
    assert r.ready_ms == (0.0, 1.0)
    assert r.end_ms == (1.5, 2.5)
    assert r.first_stall() is None


def test_peer_copies_then_forwards_with_overlap_and_contention():
    # NVLink at CHUNK bytes per ms: a layer forwards in 1 ms. Two slots in use, aggregate 10 GB/s for 2 links
    # -> 5 GB/s each -> copies take twice as long.
    p = profile(
        [(CHUNK, 1.0, 0.5, 99.0), (CHUNK, 1.0, 0.5, 99.0), (CHUNK, 1.0, 0.5, 99.0)],
        h2d=10.0,
        p2p=CHUNK / 1e6,
        concurrent={2: 10.0},
    )
    r = simulate(p, LoadSchedule((0, 1, 1), 2))
    # slot 0: layer 0 copy 0..2. slot 1: layer 1 copy 0..2, forward 2..3; layer 2 copy 2..4, forward 4..5
    assert r.ready_ms == pytest.approx((2.0, 3.0, 5.0))
    assert r.start_ms == pytest.approx((2.0, 3.0, 5.0))
    assert r.total_ms == pytest.approx(5.5)


def test_forward_queue_serializes_when_nvlink_is_the_bottleneck():
    # copies 1 ms each, forwards 3 ms each: forward of layer 1 waits for the forward of layer 0
    p = profile([(3_000_000, 1.0, 0.1, 99.0), (3_000_000, 1.0, 0.1, 99.0)], p2p=1.0)
    r = simulate(p, LoadSchedule((1, 1), 2))
    assert r.ready_ms == pytest.approx((4.0, 7.0))
    assert r.total_ms == pytest.approx(7.1)


def test_unused_slot_does_not_count_as_contention():
    p = profile([(10, 1.0, 1.0, 9.0)], concurrent={2: 10.0})
    r = simulate(p, LoadSchedule((0,), 2))
    assert r.total_ms == pytest.approx(2.0)


def test_demand_copies_all_bytes_then_runs():
    # 2e7 bytes at 10 GB/s = 2 ms, then exec 1 + 2
    p = profile([(10_000_000, 9.0, 1.0, 0.0), (10_000_000, 9.0, 2.0, 0.0)])
    r = predict_demand(p)
    assert r.total_ms == pytest.approx(5.0)
    assert r.start_ms == pytest.approx((2.0, 3.0))
    assert predict(p, "demand", LoadSchedule.all_on_target(2)).total_ms == pytest.approx(5.0)


def test_predict_dispatch_and_errors():
    p = profile([(CHUNK, 2.0, 1.0, 1.0), (CHUNK, 1.0, 1.0, 9.0)])
    assert predict(p, "pipeline", LoadSchedule.all_on_target(2)).total_ms == 4.0
    assert predict(p, "deepplan", LoadSchedule((DHA, 0), 1)).total_ms == 2.0
    with pytest.raises(PlanError, match="unknown engine"):
        predict(p, "warp", LoadSchedule.all_on_target(2))
    with pytest.raises(PlanError, match="pipeline engine copies every layer"):
        predict(p, "pipeline", LoadSchedule((DHA, 0), 1))
    with pytest.raises(PlanError, match="toy: schedule has 1 sources but the profile has 2 layers"):
        simulate(p, LoadSchedule.all_on_target(1))


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_profile_times_are_named(bad):
    p = profile([(10, bad, 1.0, 1.0)])
    with pytest.raises(PlanError, match=r"toy: layer 0 \(l0\) load_ms"):
        simulate(p, LoadSchedule.all_on_target(1))


def test_bad_links_are_named():
    p = profile([(10, 1.0, 1.0, 1.0)], p2p=0.0)
    with pytest.raises(PlanError, match="toy: link profile p2p_gbps"):
        predict_demand(p)


def test_empty_model_takes_no_time():
    p = profile([])
    assert simulate(p, LoadSchedule.all_on_target(0)).total_ms == 0.0
    assert predict_demand(p).total_ms == 0.0


def _with_host(p: ModelProfile, copy_start: float, setup: float, tail: float) -> ModelProfile:
    links = dataclasses.replace(p.links, copy_start_ms=copy_start, setup_ms=setup, tail_ms=tail)
    return dataclasses.replace(p, links=links)


def test_host_terms_shift_copies_delay_execution_and_end_with_the_tail():
    # copies can only start once memory is mapped (0.5): ready 2.5, 3.5; execution from 1.0 at the earliest
    p = _with_host(
        profile([(CHUNK, 2.0, 1.0, 0.25), (CHUNK, 1.0, 1.0, 9.0)], h2d=1e6), copy_start=0.5, setup=1.0, tail=0.25
    )
    r = simulate(p, LoadSchedule.all_on_target(2))
    assert r.ready_ms == pytest.approx((2.5, 3.5))
    assert r.start_ms == pytest.approx((2.5, 3.5))
    assert r.total_ms == pytest.approx(4.75)  # last layer ends at 4.5, then the tail
    # a DHA layer needs no copy, but still waits for the set-up
    d = simulate(p, LoadSchedule((DHA, 0), 1))
    assert d.start_ms == pytest.approx((1.0, 1.5)) and d.total_ms == pytest.approx(2.75)
    # demand: one copy of all 20 bytes after the mapping (done at ~0.5), both layers from the set-up's end on
    assert predict_demand(p).total_ms == pytest.approx(1.0 + 2.0 + 0.25)


def test_cost_model_agrees_with_the_simulator_with_host_terms():
    p = _with_host(
        profile([(10, 2.0, 1.0, 0.5), (2_000_000, 1.0, 0.5, 3.0), (10, 0.5, 0.2, 0.1)], concurrent={2: 12.0}),
        copy_start=0.4,
        setup=0.9,
        tail=0.3,
    )
    model = CostModel(p)
    for sources, n in (((0, 0, 0), 1), ((DHA, 1, 0), 2), ((1, 1, DHA), 2), ((DHA, DHA, DHA), 1)):
        assert model.total(sources) == pytest.approx(simulate(p, LoadSchedule(sources, n)).total_ms)


def test_small_layers_travel_in_one_chunk_at_link_speed_plus_one_copy_cost():
    # four 1 MB layers at 1 GB/s stream in 1 ms each; each was profiled at 1.5 ms (0.5 ms fixed cost per copy).
    # Merged: 2 MB-chunks would need 2,097,152 bytes, so layers 0-2 make one chunk (3 MB) and layer 3 is alone.
    p = profile([(1_000_000, 1.5, 0.1, 9.0)] * 4, h2d=1.0)
    assert copy_overhead_ms(p) == pytest.approx(0.5)
    r = simulate(p, LoadSchedule.all_on_target(4))
    # chunk 0: 3 ms of bytes + 0.5 ms once -> every layer of it ready at 3.5; layer 3 alone: its own 1.5 ms
    assert r.ready_ms == pytest.approx((3.5, 3.5, 3.5, 5.0))
    assert r.total_ms == pytest.approx(5.1)
    assert CostModel(p).total((0, 0, 0, 0)) == pytest.approx(r.total_ms)


def test_a_dha_layer_cuts_a_chunk_and_saves_only_its_bytes():
    p = profile([(1_000_000, 1.5, 0.1, 0.2)] * 3, h2d=1.0)
    # layer 1 by DHA: layers 0 and 2 are chunks of their own again, each paying its full profiled copy
    r = simulate(p, LoadSchedule((0, DHA, 0), 1))
    assert r.ready_ms == pytest.approx((1.5, 0.0, 3.0))
    # all copied: one 3 MB chunk, 3.5 ms; so DHA on layer 1 saves 0.5 ms, not the 1.5 ms of its own profile
    assert simulate(p, LoadSchedule.all_on_target(3)).ready_ms == pytest.approx((3.5, 3.5, 3.5))


def test_layers_with_no_bytes_of_their_own_wait_for_nothing():
    # a tied head (0 own bytes) after a DHA layer: the engine has no copy to wait for, nor does the model
    p = profile([(CHUNK, 1.0, 0.5, 0.5), (0, 0.01, 0.5, 0.5)])
    r = simulate(p, LoadSchedule((DHA, 0), 1))
    assert r.ready_ms == (0.0, 0.0)
    assert r.total_ms == pytest.approx(1.0)


def test_the_engine_copies_the_chunks_the_simulator_predicts():
    from deepplan_backend.runtime.chunking import chunk_runs

    sizes = [CHUNK // 2, CHUNK // 2, CHUNK // 4, CHUNK, 10, 10]
    assert chunk_runs((0, 0, 0, 0, 0, 0), sizes) == [[0, 1], [2, 3], [4, 5]]
    assert chunk_runs((0, DHA, 0, 1, 1, DHA), sizes) == [[0], [2], [3], [4]]
    with pytest.raises(ValueError, match="3 sources for 2 layer sizes"):
        chunk_runs((0, 0, 0), [1, 2])


def test_copy_efficiency_slows_chunk_copies_but_not_on_demands_single_transfer():
    rows = [(CHUNK, 2.0, 1.0, 9.0), (CHUNK, 1.0, 1.0, 9.0)]
    full = profile(rows)
    half = dataclasses.replace(full, links=dataclasses.replace(full.links, copy_efficiency=0.5))
    # chunk copies take twice as long: ready 4 and 6 instead of 2 and 3
    assert simulate(half, LoadSchedule.all_on_target(2)).ready_ms == pytest.approx((4.0, 6.0))
    assert CostModel(half).total((0, 0)) == pytest.approx(7.0)
    # DHA saves the slowed copy, so the selection weighs it at that price
    assert copy_saved_ms(half) == pytest.approx([2 * s for s in copy_saved_ms(full)])
    assert predict_demand(half).total_ms == pytest.approx(predict_demand(full).total_ms)


@pytest.mark.parametrize("eff", [0.0, 1.5, math.nan])
def test_copy_efficiency_outside_its_range_is_named(eff):
    p = profile([(10, 1.0, 1.0, 1.0)])
    p = dataclasses.replace(p, links=dataclasses.replace(p.links, copy_efficiency=eff))
    with pytest.raises(PlanError, match="toy: link profile copy_efficiency"):
        simulate(p, LoadSchedule.all_on_target(1))


def test_each_chunk_a_peer_copies_delays_the_launch_by_its_issue_cost():
    rows = [(CHUNK, 0.1, 1.0, 9.0)] * 4
    base = _with_host(profile(rows, p2p=1e6), copy_start=0.0, setup=1.0, tail=0.0)
    pt = dataclasses.replace(base, links=dataclasses.replace(base.links, peer_chunk_ms=0.25))
    assert peer_chunk_count((0, 0, 1, 1), [CHUNK] * 4) == 2
    assert peer_chunk_count((0, DHA, 0, 0), [CHUNK] * 4) == 0
    # two peer chunks: the forward launches at 1.0 + 2 x 0.25, then runs 4 x 1 ms (the copies are long done)
    schedule = LoadSchedule((0, 0, 1, 1), 2)
    assert simulate(pt, schedule).start_ms[0] == pytest.approx(1.5)
    assert simulate(pt, schedule).total_ms == pytest.approx(5.5)
    assert CostModel(pt).total(schedule.sources) == pytest.approx(5.5)
    # a single-GPU schedule pays no issue cost
    assert simulate(pt, LoadSchedule.all_on_target(4)).total_ms == pytest.approx(
        simulate(base, LoadSchedule.all_on_target(4)).total_ms
    )
