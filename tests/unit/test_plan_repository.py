"""Plan files: round trip, every PlanError subclass, hostile input, and plan.proto == runtime descriptor."""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from deepplan_backend.runtime import plan_messages, plan_repository
from deepplan_backend.runtime.plan import (
    DHA,
    SCHEMA_VERSION,
    LayerProfile,
    LinkProfile,
    LoadSchedule,
    Plan,
    PlanError,
    PlanKey,
    PlanVariant,
)
from deepplan_backend.runtime.plan_messages import PlanFileMessage
from deepplan_backend.runtime.plan_repository import (
    MAX_PLAN_BYTES,
    CorruptPlan,
    ForeignPlan,
    PlanNotFound,
    StalePlan,
    list_plans,
    load_plan,
    plan_filename,
    plan_from_bytes,
    plan_path,
    plan_to_bytes,
    read_plan,
    save_plan,
)

KEY = PlanKey("bert-base", 1, 384, "float32", "NVIDIA H200")
PROTO = Path(plan_messages.__file__).with_name("plan.proto")


def make_plan_obj(key: PlanKey = KEY, fingerprint: str = "abc123", num_layers: int = 5) -> Plan:
    layers = tuple(
        LayerProfile(i, f"encoder.layer{i}.dense", 1000 * (i + 1), 0.1 * i, 0.05, 0.3 + i / 7)
        for i in range(num_layers)
    )
    sources = tuple([DHA] + [0] * (num_layers // 2) + [1] * (num_layers - 1 - num_layers // 2))
    variants = (
        PlanVariant("demand", 1, LoadSchedule.all_on_target(num_layers), 3.25),
        PlanVariant("pipeline", 1, LoadSchedule.all_on_target(num_layers), 2.5),
        PlanVariant("deepplan", 2, LoadSchedule(sources, 2), 1.0 / 3),
    )
    links = LinkProfile(54.0, 390.0, {2: 81.0, 4: 132.5}, copy_efficiency=0.8, peer_chunk_ms=0.01)
    return Plan(key, fingerprint, layers, variants, links, warm_ms=4.8, created_at="2025-06-01T12:00:00Z")


def test_filename_is_sanitized():
    assert plan_filename(KEY) == "bert-base.b1.s384.float32.NVIDIA_H200.plan"
    odd = PlanKey("../evil/model", 2, 8, "float16", "NVIDIA H100 80GB HBM3 / MIG")
    name = plan_filename(odd)
    assert "/" not in name and not name.startswith(".")
    assert name == "evil_model.b2.s8.float16.NVIDIA_H100_80GB_HBM3_MIG.plan"


def test_round_trip_equality(tmp_path):
    plan = make_plan_obj()
    path = save_plan(tmp_path / "repo", plan)
    assert path == plan_path(tmp_path / "repo", KEY)
    assert load_plan(tmp_path / "repo", KEY, "abc123") == plan
    assert read_plan(path) == plan
    assert list_plans(tmp_path / "repo") == [path]
    assert list_plans(tmp_path / "missing") == []
    # overwrite in place, no temp files left behind
    save_plan(tmp_path / "repo", dataclasses.replace(plan, created_at="later"))
    assert [p.name for p in (tmp_path / "repo").iterdir()] == [path.name]
    assert load_plan(tmp_path / "repo", KEY, None).created_at == "later"


GRAPHS_KEY = dataclasses.replace(KEY, execution="graphs")


def test_a_graph_regime_plan_has_its_own_file_and_round_trips(tmp_path):
    assert plan_filename(GRAPHS_KEY) == "bert-base.b1.s384.float32.NVIDIA_H200.graphs.plan"
    eager, graphs = make_plan_obj(), make_plan_obj(GRAPHS_KEY)
    save_plan(tmp_path, eager)
    save_plan(tmp_path, graphs)
    assert load_plan(tmp_path, KEY, "abc123") == eager
    assert load_plan(tmp_path, GRAPHS_KEY, "abc123") == graphs
    assert len(list_plans(tmp_path)) == 2


def test_a_file_without_execution_is_an_eager_plan(tmp_path):
    msg = _message()
    msg.key.ClearField("execution")  # what files written before plans knew their regime hold
    _write(tmp_path, msg.SerializeToString())
    assert load_plan(tmp_path, KEY, "abc123").key.execution == "eager"


def test_a_file_without_copy_efficiency_models_copies_at_the_probed_speed(tmp_path):
    msg = _message()
    msg.links.ClearField("copy_efficiency")  # what files written before the field existed hold
    _write(tmp_path, msg.SerializeToString())
    assert load_plan(tmp_path, KEY, "abc123").links.copy_efficiency == 1.0


def test_a_plan_of_the_other_regime_is_refused(tmp_path):
    save_plan(tmp_path, make_plan_obj())
    plan_path(tmp_path, KEY).rename(plan_path(tmp_path, GRAPHS_KEY))
    with pytest.raises(ForeignPlan, match=r"execution 'eager' \(wanted 'graphs'\).*--graphs"):
        load_plan(tmp_path, GRAPHS_KEY, "abc123")


def test_an_unknown_execution_is_refused(tmp_path):
    with pytest.raises(PlanError, match="execution 'jit'"):
        dataclasses.replace(KEY, execution="jit")
    msg = _message()
    msg.key.execution = "jit"
    _write(tmp_path, msg.SerializeToString())
    with pytest.raises(CorruptPlan, match="execution 'jit'"):
        load_plan(tmp_path, KEY, "abc123")


def test_not_found_names_the_command_for_the_missing_key(tmp_path):
    key = PlanKey("gpt2", 4, 1024, "float16", "NVIDIA H200", "graphs")
    with pytest.raises(PlanNotFound, match=r"python3 -m planner -m gpt2 -p \S+ -b 4 -s 1024 --dtype float16 --graphs`"):
        load_plan(tmp_path, key, "abc123")


def test_not_found_says_how_to_make_it(tmp_path):
    with pytest.raises(PlanNotFound, match=r"python3 -m planner -m bert-base -p .*repo"):
        load_plan(tmp_path / "repo", KEY, "abc123")


def test_stale_plan(tmp_path):
    save_plan(tmp_path, make_plan_obj())
    with pytest.raises(StalePlan, match="bert-base changed since it was planned"):
        load_plan(tmp_path, KEY, "different")


def test_foreign_plan_when_file_key_differs(tmp_path):
    # a file for "NVIDIA H200" lands at the same name as "NVIDIA/H200" after sanitizing: the key inside decides
    save_plan(tmp_path, make_plan_obj())
    other = PlanKey("bert-base", 1, 384, "float32", "NVIDIA/H200")
    assert plan_path(tmp_path, other) == plan_path(tmp_path, KEY)
    with pytest.raises(ForeignPlan, match=r"gpu_name 'NVIDIA H200' \(wanted 'NVIDIA/H200'\)"):
        load_plan(tmp_path, other, "abc123")
    # a file copied under another key's name
    fp16 = dataclasses.replace(KEY, dtype="float16")
    plan_path(tmp_path, KEY).rename(plan_path(tmp_path, fp16))
    with pytest.raises(ForeignPlan, match="dtype 'float32'"):
        load_plan(tmp_path, fp16, "abc123")


def _write(tmp_path, data: bytes) -> Path:
    path = plan_path(tmp_path, KEY)
    path.write_bytes(data)
    return path


def _message(plan: Plan | None = None):
    msg = PlanFileMessage()
    msg.ParseFromString(plan_to_bytes(plan or make_plan_obj()))
    return msg


def test_wrong_schema_version(tmp_path):
    msg = _message()
    msg.schema_version = SCHEMA_VERSION + 1
    _write(tmp_path, msg.SerializeToString())
    with pytest.raises(CorruptPlan, match=f"schema version {SCHEMA_VERSION + 1}, this build reads"):
        load_plan(tmp_path, KEY, "abc123")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.variants[2].sources.__setitem__(3, 2), "source slots"),
        (lambda m: m.variants[2].sources.__setitem__(0, -2), "source slots"),
        (lambda m: m.variants[0].sources.append(0), "6 sources for 5 layers"),
        (lambda m: setattr(m.layers[1], "load_ms", float("nan")), "layer 1 load_ms"),
        (lambda m: setattr(m.layers[1], "exec_ms", -1.0), "layer 1 exec_ms"),
        (lambda m: setattr(m.layers[2], "index", 7), "index 7"),
        (lambda m: setattr(m.variants[1], "engine", "warp"), "unknown engine"),
        (lambda m: setattr(m.variants[1], "num_devices", 100), "device count"),
        (lambda m: setattr(m.variants[1], "predicted_ms", float("inf")), "predicted_ms"),
        (lambda m: setattr(m.variants[1], "engine", "demand"), "appears twice"),
        (lambda m: setattr(m.links, "h2d_gbps", 0.0), "h2d_gbps"),
        (lambda m: setattr(m.links, "copy_efficiency", 1.5), "copy_efficiency"),
        (lambda m: setattr(m.links, "copy_efficiency", -0.5), "copy_efficiency"),
        (lambda m: setattr(m.links, "peer_chunk_ms", -0.01), "peer_chunk_ms"),
        (lambda m: m.links.concurrent_h2d.add(num_devices=2, gbps=1.0), "repeated concurrent"),
        (lambda m: m.ClearField("variants"), "no variants"),
        (lambda m: m.ClearField("links"), "no link profile"),
        (lambda m: setattr(m.key, "batch_size", 0), "batch size"),
        (lambda m: setattr(m, "fingerprint", ""), "no model fingerprint"),
        (lambda m: setattr(m, "warm_ms", float("nan")), "warm_ms"),
        (lambda m: setattr(m.layers[3], "dha_exec_ms", 1e300), "layer 3 dha_exec_ms"),
        (lambda m: setattr(m.layers[0], "nbytes", 1 << 60), "claims"),
    ],
)
def test_invalid_content_is_corrupt(tmp_path, mutate, message):
    msg = _message()
    mutate(msg)
    _write(tmp_path, msg.SerializeToString())
    with pytest.raises(CorruptPlan, match=message):
        load_plan(tmp_path, KEY, "abc123")


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    path = plan_path(tmp_path, KEY)
    with open(path, "wb") as f:
        f.truncate(MAX_PLAN_BYTES + 1)  # sparse: no real disk use
    monkeypatch.setattr(plan_repository, "plan_from_bytes", lambda *a, **k: pytest.fail("file was parsed"))
    with pytest.raises(CorruptPlan, match="larger than"):
        load_plan(tmp_path, KEY, "abc123")


def test_directory_in_place_of_file(tmp_path):
    plan_path(tmp_path, KEY).mkdir()
    with pytest.raises(PlanError):
        load_plan(tmp_path, KEY, "abc123")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_huge_repeated_counts_are_refused_without_parsing():
    good = plan_to_bytes(make_plan_obj())
    empty_layer = _varint((5 << 3) | 2) + _varint(0)
    with pytest.raises(CorruptPlan, match="more than"):
        plan_from_bytes(good + empty_layer * 3_000_000)
    # a variant whose packed sources hold 5 million entries
    sources = _varint((3 << 3) | 2) + _varint(5_000_000) + b"\x00" * 5_000_000
    variant = _varint((8 << 3) | 2) + _varint(len(sources)) + sources
    with pytest.raises(CorruptPlan, match="sources"):
        plan_from_bytes(good + variant)
    # millions of unknown top-level fields
    with pytest.raises(CorruptPlan, match="fields"):
        plan_from_bytes(good + (_varint((99 << 3) | 0) + b"\x01") * 1_000_000)


def _corruptions(good: bytes, rng: random.Random):
    """A few hundred broken variants of a good plan file."""
    for cut in sorted(rng.sample(range(len(good)), min(80, len(good)))):
        if cut:
            yield "truncated", good[:cut]
    for _ in range(160):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        yield "bitflip", bytes(data)
    for _ in range(40):
        data = bytearray(good)
        start = rng.randrange(len(data))
        data[start : start + rng.randint(1, 16)] = rng.randbytes(rng.randint(0, 16))
        yield "splice", bytes(data)
    yield "empty", b""
    yield "garbage", rng.randbytes(4096)
    yield "text", b"this is not a plan\n" * 10
    yield "deep groups", _varint((9 << 3) | 3) * 10_000
    yield "huge length", _varint((5 << 3) | 2) + _varint(1 << 62)
    yield "overlong varint", b"\x08" + b"\xff" * 20
    for bad_slot in (2, 5, -3, 1 << 30):
        msg = PlanFileMessage()
        msg.ParseFromString(good)
        msg.variants[2].sources[1] = bad_slot
        yield "slot", msg.SerializeToString()
    for version in (0, 2, 99):
        msg = PlanFileMessage()
        msg.ParseFromString(good)
        msg.schema_version = version
        yield "schema", msg.SerializeToString()


def test_fuzzed_files_only_ever_raise_plan_error(tmp_path):
    good = plan_to_bytes(make_plan_obj(num_layers=12))
    rng = random.Random(1234)
    path = _write(tmp_path, good)
    t0 = time.perf_counter()
    rejected = accepted = 0
    for kind, data in _corruptions(good, rng):
        path.write_bytes(data)
        try:
            plan = load_plan(tmp_path, KEY, "abc123")
        except PlanError:
            rejected += 1
            continue
        except Exception as exc:  # pragma: no cover - the failure being tested for
            pytest.fail(f"{kind}: {type(exc).__name__} escaped: {exc}")
        # a flip inside a name or a time, or one that turns a variant into an unknown field, can leave a valid
        # plan; it must then still be the plan asked for
        accepted += 1
        assert plan.key == KEY and plan.fingerprint == "abc123" and 1 <= len(plan.variants) <= 3
    assert rejected > 200
    assert time.perf_counter() - t0 < 5.0


def test_save_refuses_invalid_plan(tmp_path):
    bad = dataclasses.replace(make_plan_obj(), warm_ms=float("nan"))
    with pytest.raises(PlanError, match="refusing to save"):
        save_plan(tmp_path, bad)
    assert list_plans(tmp_path) == []


def test_plan_proto_compiles_to_the_runtime_descriptor(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "plan.desc"
    rc = protoc.main(["protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}", str(PROTO)])
    assert rc == 0
    compiled = descriptor_pb2.FileDescriptorSet()
    compiled.ParseFromString(out.read_bytes())
    assert len(compiled.file) == 1
    assert compiled.file[0] == plan_messages.FILE_DESCRIPTOR


def test_message_classes_fall_back_to_get_prototype_on_old_runtimes(monkeypatch):
    # protobuf < 4.22 has no message_factory.GetMessageClass; the module then uses MessageFactory.GetPrototype
    from google.protobuf import message_factory

    get_class = message_factory.GetMessageClass
    monkeypatch.delattr(message_factory, "GetMessageClass")
    calls = []

    def get_prototype(self, descriptor):
        calls.append(descriptor.full_name)
        return get_class(descriptor)

    monkeypatch.setattr(message_factory.MessageFactory, "GetPrototype", get_prototype, raising=False)
    cls = plan_messages._message_class("PlanFile")
    assert calls == ["deepplan.plan.PlanFile"]
    assert cls.FromString(cls(schema_version=1).SerializeToString()).schema_version == 1
