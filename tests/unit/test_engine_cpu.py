"""The cold-start engine on the CPU (`runtime/engine.py`): same answers as the plain model in every mode,
cold and warm over evict cycles, byte accounting, and recovery from bad schedules and failing forwards.
"""

from __future__ import annotations

import pytest
import torch

from deepplan_backend.runtime.engine import ColdStartEngine
from deepplan_backend.runtime.plan import DHA, LoadSchedule
from deepplan_backend.runtime.prepared import PreparedModel, prepare
from deepplan_backend.runtime.schedules import even_split
from deepplan_backend.runtime.transfer import CopyJob, CpuCopyEngine, DeviceError, make_copy_engine
from deepplan_backend.runtime.zoo import TINY_MODELS, load_model

CPU = torch.device("cpu")
CYCLES = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mixed(n: int) -> LoadSchedule:
    """DHA for every third layer (including the first), copied otherwise."""
    return LoadSchedule(tuple(DHA if i % 3 == 0 else 0 for i in range(n)), 1)


def _schedules(n: int) -> dict[str, tuple[LoadSchedule, bool]]:
    return {
        "demand": (LoadSchedule.all_on_target(n), False),
        "pipeline": (LoadSchedule.all_on_target(n), True),
        "dha-mixed": (_mixed(n), True),
        "dha-mixed-no-overlap": (_mixed(n), False),
    }


@pytest.fixture(scope="module", params=TINY_MODELS)
def case(request: pytest.FixtureRequest) -> tuple[PreparedModel, dict[str, torch.Tensor], torch.Tensor]:
    name = request.param
    prepared = prepare(name)
    inputs = prepared.model.example_inputs(2, seed=3)
    if prepared.model.family == "resnet":  # any image size works; 64 px keeps the CPU forward at milliseconds
        inputs = {"pixel_values": torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))}
    with torch.inference_mode():
        expected = load_model(name).module(**inputs).float()  # built separately, never packed
    return prepared, inputs, expected


def _param_locations(engine: ColdStartEngine, prepared: PreparedModel) -> dict[int, str]:
    """Per layer: 'arena' or 'host' depending on where its owned tensors are bound now."""
    host = prepared.store.buffer
    h0, h1 = host.data_ptr(), host.data_ptr() + host.numel()
    modules = dict(prepared.model.module.named_modules())
    where: dict[int, str] = {}
    for layer in prepared.table:
        module = modules[layer.name]
        places = set()
        for t in layer.tensors:
            bound = (module._parameters if t.is_parameter else module._buffers)[t.attr]
            places.add("host" if h0 <= bound.data_ptr() < h1 else "arena")
        if places:
            (where[layer.index],) = places
        for s in layer.shared:  # an alias must follow its owner wherever the owner is bound
            owner = modules[prepared.table.layers[s.owner_layer].name]
            owner_t = owner._parameters.get(s.owner_attr, owner._buffers.get(s.owner_attr))
            alias = (module._parameters if s.is_parameter else module._buffers)[s.attr]
            assert alias.data_ptr() == owner_t.data_ptr(), f"{layer.name}.{s.attr} not bound to its owner"
    return where


def _no_hooks_left(prepared: PreparedModel) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in prepared.model.module.modules())


@pytest.mark.parametrize("mode", ["demand", "pipeline", "dha-mixed", "dha-mixed-no-overlap"])
def test_matches_plain_model_cold_and_warm_over_evict_cycles(case, mode: str) -> None:
    prepared, inputs, expected = case
    n = len(prepared.table)
    schedule, overlap = _schedules(n)[mode]
    engine = ColdStartEngine(prepared.model, prepared.store, [CPU])
    loaded = schedule.loaded_bytes(prepared.table.nbytes)
    addresses = set()
    for cycle in range(CYCLES):
        assert not engine.is_resident and engine.resident_bytes == 0
        cold = engine.infer(inputs, schedule, overlap)
        assert cold.cold and cold.copied_bytes == loaded
        assert engine.is_resident and engine.resident_bytes == loaded
        where = _param_locations(engine, prepared)
        for i in where:
            assert where[i] == ("host" if schedule.sources[i] == DHA else "arena"), (mode, i)
        addresses.add(tuple(p.data_ptr() for p in prepared.model.module.parameters()))
        warm = engine.infer(inputs, schedule, overlap)
        assert not warm.cold and warm.copied_bytes == 0 and warm.phases is None
        assert cold.phases is not None and 0 <= cold.phases.mapped_ms <= cold.phases.launch_ms <= cold.latency_ms
        for result in (cold, warm):
            assert result.output.dtype == torch.float32 and result.output.device == CPU
            assert result.latency_ms > 0
            torch.testing.assert_close(result.output, expected, rtol=1e-6, atol=1e-6, msg=f"{mode} #{cycle}")
        engine.evict()
        assert not engine.is_resident and engine.resident_bytes == 0
        assert set(_param_locations(engine, prepared).values()) <= {"host"}
        assert _no_hooks_left(prepared)
    assert len(addresses) == 1, "weights moved between cold starts: the arena address must be stable"
    # Evicted, the module is a valid CPU model over host memory.
    with torch.inference_mode():
        torch.testing.assert_close(prepared.model.module(**inputs).float(), expected, rtol=1e-6, atol=1e-6)


def test_copied_bytes_exclude_dha_layers(case) -> None:
    prepared, inputs, expected = case
    n, nbytes = len(prepared.table), prepared.table.nbytes
    engine = ColdStartEngine(prepared.model, prepared.store, [CPU])
    mixed = _mixed(n)
    dha = sum(nbytes[i] for i in mixed.dha_layers)
    assert dha > 0
    result = engine.infer(inputs, mixed)
    assert result.copied_bytes == engine.resident_bytes == prepared.table.total_bytes - dha
    engine.evict()
    every = engine.infer(inputs, LoadSchedule((DHA,) * n, 1))
    assert every.copied_bytes == 0 and engine.resident_bytes == 0 and engine.is_resident
    torch.testing.assert_close(every.output, expected, rtol=1e-6, atol=1e-6)
    engine.evict()


def test_prepare_builds_the_layout_without_provisioning(case) -> None:
    prepared, inputs, expected = case
    engine = ColdStartEngine(prepared.model, prepared.store, [CPU])
    schedule = _mixed(len(prepared.table))
    engine.prepare(schedule)
    assert not engine.is_resident and engine.resident_bytes == 0
    layout = engine._layouts[schedule]
    cold = engine.infer(inputs, schedule)
    assert cold.cold and engine._layouts[schedule] is layout  # the first cold start reused it
    torch.testing.assert_close(cold.output, expected, rtol=1e-6, atol=1e-6)
    engine.close()


def test_resident_model_answers_warm_whatever_the_schedule(case) -> None:
    prepared, inputs, expected = case
    n = len(prepared.table)
    engine = ColdStartEngine(prepared.model, prepared.store, [CPU])
    engine.infer(inputs, LoadSchedule.all_on_target(n))
    other = engine.infer(inputs, _mixed(n))
    assert not other.cold and other.copied_bytes == 0
    assert engine.resident_bytes == prepared.table.total_bytes
    torch.testing.assert_close(other.output, expected, rtol=1e-6, atol=1e-6)
    engine.evict()


@pytest.mark.parametrize("case", ["tiny-bert"], indirect=True)
def test_bad_schedules_raise_and_leave_the_engine_usable(case) -> None:
    prepared, inputs, expected = case
    n = len(prepared.table)
    engine = ColdStartEngine(prepared.model, prepared.store, [CPU])
    for bad in (
        LoadSchedule.all_on_target(n - 1),
        LoadSchedule.all_on_target(n + 1),
        LoadSchedule((0,) * n, 2),  # more devices than the engine has
        even_split(prepared.table.nbytes, 2),
    ):
        with pytest.raises(DeviceError) as info:
            engine.infer(inputs, bad)
        assert prepared.model.name in str(info.value)
        assert not engine.is_resident and engine.resident_bytes == 0
        result = engine.infer(inputs, LoadSchedule.all_on_target(n))
        assert result.cold
        torch.testing.assert_close(result.output, expected, rtol=1e-6, atol=1e-6)
        engine.evict()


class _FailOnce:
    def __init__(self) -> None:
        self.armed = True

    def __call__(self, _module: torch.nn.Module, _args: object, _out: object) -> None:
        if self.armed:
            self.armed = False
            raise RuntimeError("injected failure")


@pytest.mark.parametrize("mode", ["demand", "pipeline", "dha-mixed"])
def test_failing_forward_evicts_and_engine_recovers(case, mode: str) -> None:
    prepared, inputs, expected = case
    n = len(prepared.table)
    schedule, overlap = _schedules(n)[mode]
    engine = ColdStartEngine(prepared.model, prepared.store, [CPU])
    middle = dict(prepared.model.module.named_modules())[prepared.table.layers[n // 2].name]
    handle = middle.register_forward_hook(_FailOnce())
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            engine.infer(inputs, schedule, overlap)
        assert not engine.is_resident and engine.resident_bytes == 0
        assert set(_param_locations(engine, prepared).values()) <= {"host"}
        retry = engine.infer(inputs, schedule, overlap)
    finally:
        handle.remove()
    assert retry.cold and retry.copied_bytes == schedule.loaded_bytes(prepared.table.nbytes)
    torch.testing.assert_close(retry.output, expected, rtol=1e-6, atol=1e-6)
    engine.evict()
    assert _no_hooks_left(prepared)


@pytest.mark.parametrize("case", ["tiny-gpt2"], indirect=True)
def test_two_cpu_slots_run_a_parallel_transmission_schedule(case) -> None:
    prepared, inputs, expected = case
    copier = make_copy_engine([CPU, CPU])
    assert isinstance(copier, CpuCopyEngine) and copier.num_slots == 2
    engine = ColdStartEngine(prepared.model, prepared.store, [CPU, CPU])
    split = even_split(prepared.table.nbytes, 2)
    assert set(split.sources) == {0, 1}
    dha_split = LoadSchedule(tuple(DHA if i == 1 else s for i, s in enumerate(split.sources)), 2)
    for schedule in (split, dha_split, LoadSchedule.all_on_target(len(prepared.table))):
        for _ in range(2):
            cold = engine.infer(inputs, schedule)
            warm = engine.infer(inputs, schedule)
            assert cold.cold and not warm.cold
            assert cold.copied_bytes == schedule.loaded_bytes(prepared.table.nbytes)
            torch.testing.assert_close(cold.output, expected, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(warm.output, expected, rtol=1e-6, atol=1e-6)
            engine.evict()


def test_cpu_copy_engine_checks_slots() -> None:
    src, dst = torch.arange(8, dtype=torch.uint8), torch.zeros(8, dtype=torch.uint8)
    one = make_copy_engine([CPU])
    assert one.num_slots == 1
    assert one.issue([CopyJob(0, src, dst)]) == [None]
    assert torch.equal(dst, src)
    with pytest.raises(DeviceError, match="slot 1"):
        one.issue([CopyJob(1, src, dst)])
    with pytest.raises(DeviceError):
        CpuCopyEngine(CPU, num_slots=2).issue([CopyJob(-1, src, dst)])


def test_engine_needs_a_device() -> None:
    prepared = prepare("tiny-bert")
    with pytest.raises(DeviceError):
        ColdStartEngine(prepared.model, prepared.store, [])


def test_fp16_and_bf16_engines_take_fp32_inputs() -> None:
    for name, dtype in (("tiny-resnet", "bfloat16"), ("tiny-bert", "float16")):
        prepared = prepare(name, dtype=dtype)
        inputs = prepared.model.example_inputs(1)
        fp32_inputs = {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()}
        with torch.inference_mode():
            expected = load_model(name, dtype=dtype).module(**inputs).float()
        engine = ColdStartEngine(prepared.model, prepared.store, [CPU])
        result = engine.infer(fp32_inputs, _mixed(len(prepared.table)))
        assert result.output.dtype == torch.float32
        torch.testing.assert_close(result.output, expected, rtol=0, atol=0)
        engine.evict()


def test_provision_makes_the_next_request_warm() -> None:
    prepared = prepare("tiny-bert")
    inputs = prepared.model.example_inputs(1)
    with torch.inference_mode():
        expected = prepared.model.module(**inputs)
    engine = ColdStartEngine(prepared.model, prepared.store, [CPU])
    schedule = LoadSchedule.all_on_target(len(prepared.table))
    setup_ms = engine.provision(schedule)
    assert setup_ms >= 0 and engine.is_resident and engine.resident_bytes == prepared.table.total_bytes
    assert engine.provision(schedule) == 0.0  # already resident
    result = engine.infer(inputs, schedule)
    assert not result.cold
    torch.testing.assert_close(result.output, expected, rtol=1e-6, atol=1e-6)
    engine.evict()
    assert not engine.is_resident


def test_provision_after_a_cold_start_with_the_same_schedule() -> None:
    prepared = prepare("tiny-bert")
    inputs = prepared.model.example_inputs(1)
    engine = ColdStartEngine(prepared.model, prepared.store, [CPU])
    schedule = LoadSchedule.all_on_target(len(prepared.table))
    engine.infer(inputs, schedule)
    engine.evict()
    engine.provision(schedule)
    assert engine.is_resident
    engine.evict()


def test_close_evicts() -> None:
    prepared = prepare("tiny-bert")
    inputs = prepared.model.example_inputs(1)
    engine = ColdStartEngine(prepared.model, prepared.store, [CPU])
    engine.infer(inputs, LoadSchedule.all_on_target(len(prepared.table)))
    engine.close()
    assert not engine.is_resident and engine.resident_bytes == 0
    with torch.inference_mode():
        assert torch.isfinite(prepared.model.module(**inputs)).all()  # back on host memory
