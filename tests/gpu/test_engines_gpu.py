"""GPU paths of the engine: every mode equals the plain transformers model on the GPU, cold and warm, over
repeated evict/re-provision cycles, with device memory back to its starting level after each eviction.

Skipped without CUDA; run on the device machine (`pytest tests/gpu`). `DEEPPLAN_GPU_MODELS` selects models
(default: the tiny variants plus resnet50 and bert-base).
"""

from __future__ import annotations

import os

import pytest
import torch

from deepplan_backend.runtime.engine import ColdStartEngine
from deepplan_backend.runtime.plan import LoadSchedule
from deepplan_backend.runtime.prepared import prepare
from tests.gpu.engine_checks import cold_then_warm, reference_output, schedules_by_mode

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

MODELS = os.environ.get("DEEPPLAN_GPU_MODELS", "tiny-resnet tiny-bert tiny-gpt2 resnet50 bert-base").split()
CYCLES = 3


@pytest.mark.parametrize("name", MODELS)
def test_every_mode_matches_plain_model(name: str) -> None:
    prepared = prepare(name)
    inputs = prepared.model.example_inputs(1)
    expected = reference_output(name, "float32", inputs)
    devices = [torch.device("cuda", i) for i in range(min(4, torch.cuda.device_count()))]
    engine = ColdStartEngine(prepared.model, prepared.store, devices)
    n = len(prepared.table)
    schedules = schedules_by_mode(n, prepared.table.nbytes)
    # One throwaway cycle per mode, so that lazily created kernels, handles and the per-process PT staging
    # rings (bounded, shared by all engines) count in the baseline, not as a leak.
    for schedule, overlap in schedules.values():
        engine.infer(inputs, schedule, overlap)
        engine.evict()
    torch.cuda.synchronize()
    baseline = [torch.cuda.mem_get_info(d)[0] for d in devices]
    for mode, (schedule, overlap) in schedules.items():
        for cycle in range(CYCLES):
            cold_then_warm(engine, inputs, schedule, overlap, expected, f"{mode} #{cycle}")
            engine.evict()
            free = [torch.cuda.mem_get_info(d)[0] for d in devices]
            for d, (before, after) in enumerate(zip(baseline, free, strict=True)):
                # The driver's free memory is back within 2 MiB (not just PyTorch's cache).
                assert before - after < (2 << 20), f"{mode}: GPU {d} lost {(before - after) >> 20} MiB after evict"


def test_dha_view_reads_host_memory_in_place() -> None:
    prepared = prepare("tiny-bert")
    base = prepared.store.dha_base(torch.device("cuda:0"))
    assert base.device.type == "cuda"
    prepared.store.buffer[:4] = torch.tensor([1, 2, 3, 4], dtype=torch.uint8)
    assert base[:4].cpu().tolist() == [1, 2, 3, 4]  # a write on the host is seen by the GPU view: no copy


def test_fp16_matches_plain_model() -> None:
    prepared = prepare("bert-base", dtype="float16")
    inputs = prepared.model.example_inputs(1, 128)
    expected = reference_output("bert-base", "float16", inputs)
    engine = ColdStartEngine(prepared.model, prepared.store, [torch.device("cuda:0")])
    out = engine.infer(inputs, LoadSchedule.all_on_target(len(prepared.table))).output
    engine.evict()
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", ["tiny-resnet", "resnet50", "bert-base", "gpt2"])
def test_graph_replay_survives_evict_cycles(name: str) -> None:
    """Cold and warm forwards replayed as CUDA graphs stay correct across evict/re-provision cycles."""
    prepared = prepare(name)
    inputs = prepared.model.example_inputs(1)
    expected = reference_output(name, "float32", inputs)
    devices = [torch.device("cuda", i) for i in range(min(4, torch.cuda.device_count()))]
    engine = ColdStartEngine(prepared.model, prepared.store, devices, graphs=True)
    n = len(prepared.table)
    for mode, (schedule, overlap) in schedules_by_mode(n, prepared.table.nbytes).items():
        for cycle in range(CYCLES + 1):  # the first warm request captures; later cold starts replay
            cold_then_warm(engine, inputs, schedule, overlap, expected, f"{mode} #{cycle}")
            engine.evict()
        captured = [g for layout in engine._layouts.values() for g in layout.captured.values()]
        print(f"{name} {mode}: captured graphs {sum(g is not None for g in captured)}/{len(captured)}")
    if name != "gpt2":  # every layout's forward was captured: none silently stayed eager
        assert all(g is not None for layout in engine._layouts.values() for g in layout.captured.values())
    for layout in engine._layouts.values():  # and warm requests replayed their own capture, without the waits
        assert layout.warm_graphs.keys() == layout.captured.keys()
        assert all((layout.warm_graphs[k] is None) == (g is None) for k, g in layout.captured.items())
    engine.close()


def test_graph_regime_profile_measures_gpu_time_and_its_plan_replays_correctly() -> None:
    """A graph-regime profile holds GPU time (ResNet-50's eager batch-1 forward is paced by host launches, its
    GPU time is far shorter) and the plan made from it replays correctly over evict cycles."""
    from planner.planning import make_plan
    from planner.profiler import profile_model

    prepared = prepare("resnet50")
    devices = [torch.device("cuda", i) for i in range(min(2, torch.cuda.device_count()))]
    eager = profile_model(prepared, devices, warmup=1, repeats=3, progress=False)
    graphs = profile_model(prepared, devices, warmup=1, repeats=3, progress=False, graphs=True)
    assert (eager.key.execution, graphs.key.execution) == ("eager", "graphs")
    print(f"resnet50 forward: eager {eager.warm_ms:.3f} ms, GPU-bound {graphs.warm_ms:.3f} ms")
    assert graphs.warm_ms < 0.8 * eager.warm_ms
    assert sum(layer.exec_ms for layer in graphs.layers) == pytest.approx(graphs.warm_ms, rel=1e-6)
    assert 0 < graphs.links.copy_start_ms <= graphs.links.setup_ms
    plan = make_plan(graphs, [len(devices)], "now")
    schedule = plan.variant("deepplan", len(devices)).schedule
    inputs = prepared.model.example_inputs(1)
    expected = reference_output("resnet50", "float32", inputs)
    engine = ColdStartEngine(prepared.model, prepared.store, devices, graphs=True)
    for cycle in range(CYCLES):
        cold_then_warm(engine, inputs, schedule, True, expected, f"graph-regime plan #{cycle}")
        engine.evict()
    engine.close()


def test_graphs_share_one_pool_that_outlives_every_model_and_shapes_are_capped() -> None:
    """Graphs of a GPU share one pool; it must survive the destruction of every graph captured into it (before the
    keeper graph, every capture after a closed engine's failed a PyTorch assertion and silently stayed eager)."""
    from deepplan_backend.runtime import graphs
    from deepplan_backend.runtime.graphs import MAX_SHAPES, shared_pool

    prepared = prepare("tiny-bert")
    target = torch.device("cuda:0")
    schedule = LoadSchedule.all_on_target(len(prepared.table))
    inputs = prepared.model.example_inputs(1, 4)
    for _ in range(2):  # a model captures, then goes away with its graph
        gone = ColdStartEngine(prepared.model, prepared.store, [target], graphs=True)
        gone.infer(inputs, schedule)
        gone.infer(inputs, schedule)
        assert all(g is not None for g in gone._resident.captured.values())
        retired = len(graphs._retired)
        gone.close()
        assert len(graphs._retired) == min(graphs.MAX_RETIRED, retired + 3)  # cold and warm graph, and the events
        del gone
    assert shared_pool(target) is shared_pool(torch.device("cuda", 0))
    engine = ColdStartEngine(prepared.model, prepared.store, [target], graphs=True)
    engine.infer(inputs, schedule)  # cold
    for seq in range(4, 4 + MAX_SHAPES + 3):
        inputs = prepared.model.example_inputs(1, seq)
        expected = reference_output("tiny-bert", "float32", inputs)
        for _ in range(2):  # capture (or eager past the cap), then replay
            out = engine.infer(inputs, schedule).output
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4, msg=f"seq {seq}")
    captured = engine._resident.captured
    assert len(captured) == MAX_SHAPES and all(g is not None for g in captured.values())
    engine.close()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_target_other_than_gpu0_from_a_thread_on_gpu0() -> None:
    """An engine host serves models of one target GPU from threads that last used another GPU."""
    prepared = prepare("tiny-bert")
    inputs = prepared.model.example_inputs(1)
    expected = reference_output("tiny-bert", "float32", inputs)
    order = [1, 0, *range(2, min(4, torch.cuda.device_count()))]
    engine = ColdStartEngine(prepared.model, prepared.store, [torch.device("cuda", i) for i in order])
    n = len(prepared.table)
    for mode, (schedule, overlap) in schedules_by_mode(n, prepared.table.nbytes).items():
        # Before each request the thread's current device is set to one that is not the target.
        cold_then_warm(
            engine, inputs, schedule, overlap, expected, f"{mode} on cuda:1", lambda: torch.cuda.set_device(0)
        )
        engine.evict()
    engine.close()


def test_served_model_warms_up_at_load_on_its_device_thread(tmp_path, monkeypatch) -> None:
    """The load-time warm-up runs on the GPU through the device runner and leaves the device empty; the first
    request is still a correct cold start (budget and residency as in an engine host)."""
    import concurrent.futures

    import numpy as np

    from deepplan_backend.runtime import served_model
    from deepplan_backend.runtime.serve_settings import ServeSettings
    from deepplan_backend.runtime.served_model import ServedModel

    monkeypatch.setattr(served_model, "_WARMED", set())
    monkeypatch.setenv("DEEPPLAN_ALLOWED_ROOTS", f"{tmp_path / 'plans'}:{tmp_path / 'state'}")
    device = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    settings = ServeSettings.from_parameters(
        {"model": "tiny-bert", "engine": "pipeline", "devices": "0", "plan_repository": str(tmp_path / "plans"),
         "residency_dir": str(tmp_path / "state"), "budget": "256MiB"},
        model_dir=tmp_path,
    )  # fmt: skip
    served = ServedModel(settings, "w#0", 1, device_runner=lambda fn: device.submit(fn).result())
    try:
        assert served.engine.resident_bytes == 0 and served.evictions == 0
        assert not served.residency.snapshot()["models"]["w#0"]["resident"]
        x = np.random.default_rng(3).integers(0, 1000, (1, 8), dtype=np.int64)
        first = served.answer([{"input_ids": x}])[0]
        assert first.error is None and first.cold
        expected = reference_output("tiny-bert", "float32", {"input_ids": torch.from_numpy(x)})
        torch.testing.assert_close(torch.from_numpy(first.output), expected, rtol=1e-4, atol=1e-4)
    finally:
        served.close()
        device.shutdown()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("with_events", [False, True])
def test_peer_lane_ring_wraps_without_corrupting_bytes(with_events: bool) -> None:
    """Jobs larger than a staging slot, and more pieces than the ring has slots, arrive intact over a peer: the
    ring's reused slot events must order every overwrite after the previous pull."""
    from deepplan_backend.runtime.transfer import STAGING_SLOT_BYTES, STAGING_SLOTS, CopyJob, CudaCopyEngine

    target, peer = torch.device("cuda", 0), torch.device("cuda", 1)
    sizes = [1, STAGING_SLOT_BYTES * 2 + 4097, 12345, STAGING_SLOT_BYTES, STAGING_SLOT_BYTES // 3 + 1]
    assert sum(-(-n // STAGING_SLOT_BYTES) for n in sizes) > STAGING_SLOTS
    gen = torch.Generator().manual_seed(0)
    src = [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen).pin_memory() for n in sizes]
    dst = [torch.zeros(n, dtype=torch.uint8, device=target) for n in sizes]
    engine = CudaCopyEngine(target, [peer])
    jobs = [CopyJob(1 if k % 4 else 0, s, d) for k, (s, d) in enumerate(zip(src, dst, strict=True))]
    for _ in range(2):  # the second round reuses slots whose events the first one recorded
        for d in dst:
            d.zero_()
        with torch.cuda.device(target):
            events = [torch.cuda.Event() for _ in jobs] if with_events else None
            for token in engine.issue(jobs, events):
                engine.wait(token)
            torch.cuda.current_stream(target).synchronize()
        for k, (s, d) in enumerate(zip(src, dst, strict=True)):
            assert torch.equal(d.cpu(), s), f"job {k} ({sizes[k]} bytes) arrived corrupted"


def test_every_graph_model_captures_its_graphs_at_load(tmp_path, monkeypatch) -> None:
    """With graphs, every model warms up at load, also when models load together on one device thread (an engine
    host) with room for one at a time: each one's first cold start already replays a graph, and its first warm
    request captures nothing. It took 39-56 ms under load when it did (sessions 9 and 10, Fig. 12): first because
    only the first model of a kind warmed up, then because the others' warm-ups evicted a model between its two
    warm-up requests."""
    import concurrent.futures
    import threading

    from deepplan_backend.runtime import served_model
    from deepplan_backend.runtime.serve_settings import ServeSettings
    from deepplan_backend.runtime.served_model import ServedModel

    monkeypatch.setenv("DEEPPLAN_ALLOWED_ROOTS", f"{tmp_path / 'plans'}:{tmp_path / 'state'}:{tmp_path / 'probe'}")

    def settings(state: str, budget: str) -> ServeSettings:
        return ServeSettings.from_parameters(
            {"model": "tiny-bert", "engine": "pipeline", "devices": "0", "plan_repository": str(tmp_path / "plans"),
             "residency_dir": str(tmp_path / state), "budget": budget, "graphs": "true"},
            model_dir=tmp_path,
        )  # fmt: skip

    probe = ServedModel(settings("probe", "256MiB"), "probe#0", 1)
    need = probe.need_bytes
    probe.close()
    monkeypatch.setattr(served_model, "_WARMED", set())
    cfg = settings("state", f"{need + need // 2}B")  # room for one model at a time
    device = concurrent.futures.ThreadPoolExecutor(max_workers=1)  # the host's single device thread
    lock = threading.Lock()

    def load(i: int) -> ServedModel:
        return ServedModel(cfg, f"g{i}#0", 1, exec_lock=lock, device_runner=lambda fn: device.submit(fn).result())

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as loads:  # the host's connection threads
        models = list(loads.map(load, range(4)))
    try:
        # The warm-up's inputs' shape (graphs are per shape): the model's example inputs at the configured length.
        example = models[1].model.example_inputs(1, cfg.seq_len, seed=5)
        arrays = {k: v.numpy() for k, v in example.items()}
        for m in models:
            assert m.engine.replays_graph(m.schedule, m.validate(arrays)), m.key  # captured at load, not later
            assert not m.engine.is_resident
        expected = reference_output("tiny-bert", "float32", example)
        for m in models:
            layouts = list(m.engine._layouts.values())
            captured = sum(len(layout.warm_graphs) for layout in layouts)
            cold, warm = m.answer([arrays])[0], m.answer([arrays])[0]
            assert cold.cold and not warm.cold, m.key
            assert sum(len(layout.warm_graphs) for layout in layouts) == captured, m.key  # nothing captured now
            torch.testing.assert_close(torch.from_numpy(warm.output), expected, rtol=1e-4, atol=1e-4)
    finally:
        for m in models:
            m.close()
        device.shutdown()
