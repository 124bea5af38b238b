"""The profiler on the CPU (`planner/profiler.py`): one calibrated row per layer, keyed for this machine."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from deepplan_backend.runtime.engine import ColdStartEngine
from deepplan_backend.runtime.plan import LoadSchedule, ModelProfile
from deepplan_backend.runtime.prepared import PreparedModel, prepare
from planner.profiler import _calibrated, measure_links, profile_model

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bert() -> tuple[PreparedModel, ModelProfile]:
    prepared = prepare("tiny-bert")
    # Medians of 5: the DHA and resident spans time the same CPU forward, and with 2 samples one slow run could
    # push every layer's DHA penalty below zero (clipped to 0: seen once in CI).
    return prepared, profile_model(prepared, [CPU], repeats=5, warmup=2, progress=False)


def test_one_profile_row_per_layer(bert) -> None:
    prepared, profile = bert
    assert len(profile.layers) == len(prepared.table)
    for row, layer in zip(profile.layers, prepared.table, strict=True):
        assert (row.index, row.name, row.nbytes) == (layer.index, layer.name, layer.nbytes)
    assert profile.total_bytes == prepared.table.total_bytes


def test_times_are_nonnegative_and_finite(bert) -> None:
    _, profile = bert
    for row in profile.layers:
        for value in (row.load_ms, row.exec_ms, row.dha_exec_ms):
            assert math.isfinite(value) and value >= 0, row
    assert profile.warm_ms > 0
    assert sum(row.exec_ms for row in profile.layers) > 0
    assert sum(row.dha_exec_ms for row in profile.layers) > 0
    assert sum(row.load_ms for row in profile.layers) > 0


def test_exec_times_add_up_to_the_warm_forward(bert) -> None:
    _, profile = bert
    assert sum(row.exec_ms for row in profile.layers) == pytest.approx(profile.warm_ms, rel=1e-6)


def test_key_and_fingerprint(bert) -> None:
    prepared, profile = bert
    assert profile.key.gpu_name == "cpu"
    assert profile.key.model == "tiny-bert"
    assert (profile.key.batch_size, profile.key.seq_len, profile.key.dtype) == (1, 16, "float32")
    assert profile.key == prepared.plan_key(1, None, "cpu")
    assert profile.fingerprint == prepared.fingerprint


def test_links_measured(bert) -> None:
    _, profile = bert
    links = profile.links
    assert links.h2d_gbps > 0 and links.p2p_gbps > 0
    assert links.concurrent_h2d_gbps.get(1, 0) > 0
    assert links.setup_ms >= 0 and math.isfinite(links.setup_ms)
    # fitted on the profile's own cold starts: a tail, a copy efficiency within (0, 1], no PT on one device
    assert links.tail_ms >= 0 and 0 < links.copy_efficiency <= 1 and links.peer_chunk_ms == 0


def test_cold_starts_sample_a_warm_request_after_each_timed_cold_start(bert) -> None:
    from planner.profiler import cold_starts

    prepared, _ = bert
    n = len(prepared.table)
    engine = ColdStartEngine(prepared.model, prepared.store, [CPU])
    warm: list[float] = []
    try:
        schedule = LoadSchedule.all_on_target(n)
        pipelined, demand = cold_starts(
            engine,
            prepared.model.example_inputs(1),
            [schedule, schedule],
            warmup=1,
            repeats=2,
            overlaps=[True, False],
            warm=warm,
        )
    finally:
        engine.close()
    assert [r.cold for r in pipelined + demand] == [True] * 4
    assert len(warm) == 4 and all(ms > 0 for ms in warm)
    assert not engine.is_resident
    with pytest.raises(ValueError, match="2 overlap flags for 1 schedules"):
        cold_starts(engine, prepared.model.example_inputs(1), [schedule], 0, 1, overlaps=[True, False])


def test_profiling_leaves_the_model_on_host_memory(bert) -> None:
    prepared, _ = bert
    buffer = prepared.store.buffer
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel()
    module = prepared.model.module
    for t in (*module.parameters(), *module.buffers()):
        assert start <= t.data_ptr() < end
    assert all(not m._forward_pre_hooks for m in module.modules())
    inputs = prepared.model.example_inputs(1)
    fresh = prepare("tiny-bert")
    with torch.inference_mode():
        assert torch.equal(module(**inputs), fresh.model.module(**inputs))


def test_batch_and_sequence_length_reach_the_key() -> None:
    prepared = prepare("tiny-gpt2")
    profile = profile_model(prepared, [CPU], batch_size=2, seq_len=8, repeats=1, warmup=0, progress=False)
    assert (profile.key.batch_size, profile.key.seq_len, profile.key.gpu_name) == (2, 8, "cpu")
    assert len(profile.layers) == len(prepared.table)
    assert sum(row.exec_ms for row in profile.layers) == pytest.approx(profile.warm_ms, rel=1e-6)
    # The tied LM head's DHA penalty is charged to the embedding that owns the tensor.
    head = next(layer for layer in prepared.table if layer.shared)
    assert profile.layers[head.index].dha_exec_ms <= profile.layers[head.index].exec_ms + 1e-9


def test_layer_times_follow_the_engine_speed_and_dha_keeps_its_penalty() -> None:
    from planner.profiler import _to_engine_speed

    exec_ms, dha_ms = _to_engine_speed([1.0, 2.0], [3.0, 2.5], 1.5)
    assert exec_ms == [1.5, 3.0] and dha_ms == [3.5, 3.5]
    # a faster engine shrinks the execution; a DHA time whose penalty is negative stays at zero, not below
    exec_ms, dha_ms = _to_engine_speed([2.0, 4.0], [2.5, 1.0], 0.25)
    assert exec_ms == [0.5, 1.0] and dha_ms == [1.0, 0.0]


def test_calibration_scales_spans_to_the_forward() -> None:
    assert _calibrated([1.0, 3.0], 8.0) == [2.0, 6.0]
    assert _calibrated([0.0, 0.0], 5.0) == [0.0, 0.0]


def test_measure_links_on_cpu() -> None:
    links = measure_links([CPU], nbytes=1 << 20)
    assert links.h2d_gbps > 0 and links.p2p_gbps == links.h2d_gbps
    assert set(links.concurrent_h2d_gbps) == {1}


def test_host_terms_are_fitted_from_cold_start_milestones() -> None:
    from deepplan_backend.runtime.chunking import CHUNK_BYTES
    from deepplan_backend.runtime.engine import ColdPhases, InferenceResult
    from deepplan_backend.runtime.plan import LayerProfile, LinkProfile, PlanError, PlanKey
    from planner.profiler import MIN_COPY_EFFICIENCY, fit_host_terms
    from planner.simulate import simulate

    # layers of a whole chunk each, so each copy costs its profiled load time
    layers = (LayerProfile(0, "a", CHUNK_BYTES, 2.0, 1.0, 5.0), LayerProfile(1, "b", CHUNK_BYTES, 1.0, 1.0, 5.0))
    profile = ModelProfile(PlanKey("toy", 1, 8, "float32", "cpu"), "fp", layers, LinkProfile(10.0, 10.0), 2.0)
    out = torch.zeros(1)

    def cold(mapped: float, launch: float, total: float) -> InferenceResult:
        return InferenceResult(out, True, total, 20, ColdPhases(mapped, launch))

    pipelined = [cold(0.4, 0.9, 5.0), cold(0.6, 1.1, 5.2), cold(0.5, 1.0, 9.0)]
    demand = [cold(0.5, 0.5, 3.3), cold(0.5, 0.5, 3.4), cold(0.5, 0.5, 3.5)]
    links = fit_host_terms(profile, pipelined, demand)
    # medians: copies from 0.5, launch at 1.0
    assert (links.copy_start_ms, links.setup_ms) == pytest.approx((0.5, 1.0))
    # On-Demand: one 4 MiB transfer ready at 0.5 + 0.42, run from the launch at 1.0 for 2 ms: 3.0; measured 3.4
    assert links.tail_ms == pytest.approx(0.4)
    # pipelined: b lands at 0.5 + 3 / eff, runs 1 ms, plus the tail; the measured median 5.2 gives eff = 3 / 3.3
    assert links.copy_efficiency == pytest.approx(3 / 3.3, rel=1e-6)
    fitted = dataclasses.replace(profile, links=links)
    assert simulate(fitted, LoadSchedule.all_on_target(2)).total_ms == pytest.approx(5.2, rel=1e-6)
    # a model the simulation already over-predicts gets no negative tail, and copies no faster than the probe
    fast = fit_host_terms(profile, [cold(0.5, 1.0, 3.0)], [cold(0.5, 0.5, 2.0)])
    assert (fast.tail_ms, fast.copy_efficiency) == (0.0, 1.0)
    # a cold start far slower than any copy speed explains is clamped, not fitted to nonsense
    assert fit_host_terms(profile, [cold(0.5, 1.0, 900.0)], demand).copy_efficiency == MIN_COPY_EFFICIENCY
    with pytest.raises(PlanError, match="no pipelined and On-Demand cold starts"):
        fit_host_terms(profile, pipelined, [])


def test_peer_issue_cost_is_the_pt_set_up_excess_per_peer_chunk() -> None:
    from deepplan_backend.runtime.chunking import CHUNK_BYTES
    from deepplan_backend.runtime.engine import ColdPhases, InferenceResult
    from deepplan_backend.runtime.plan import LayerProfile, LinkProfile, PlanKey
    from planner.profiler import fit_peer_issue

    layers = tuple(LayerProfile(i, f"l{i}", CHUNK_BYTES, 0.1, 1.0, 5.0) for i in range(6))
    links = LinkProfile(10.0, 100.0, setup_ms=1.0)
    profile = ModelProfile(PlanKey("toy", 1, 8, "float32", "cpu"), "fp", layers, links, 6.0)
    out = torch.zeros(1)
    colds = [InferenceResult(out, True, 9.0, 1, ColdPhases(0.5, launch)) for launch in (1.5, 1.6, 9.0)]
    # three peer chunks; the PT set-up's median 1.6 ms exceeds the single-GPU 1.0 ms by 0.6 ms
    fitted = fit_peer_issue(profile, LoadSchedule((0, 0, 0, 1, 1, 1), 2), colds)
    assert fitted.peer_chunk_ms == pytest.approx(0.2)
    # nothing copied by peers, or no cold start: the links are left as they were
    assert fit_peer_issue(profile, LoadSchedule.all_on_target(6), colds) == links
    assert fit_peer_issue(profile, LoadSchedule((0, 0, 0, 1, 1, 1), 2), []) == links


def test_graph_regime_planning_is_refused_without_a_gpu() -> None:
    from deepplan_backend.runtime.plan import PlanError

    with pytest.raises(PlanError, match="CUDA-graph execution needs a GPU"):
        profile_model(prepare("tiny-bert"), [CPU], repeats=1, warmup=0, progress=False, graphs=True)
