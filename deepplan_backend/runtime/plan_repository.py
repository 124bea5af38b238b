"""Plan repository: one protobuf plan file per PlanKey in a folder; save, load, list.

Loading treats the file as hostile input: its size is checked before it is read, the wire format is scanned
for element counts before protobuf builds any objects (so a small file cannot make it allocate gigabytes), and
every decoded value is range-checked. Every failure is a PlanError subclass whose message names the model, the
file and what is wrong; nothing else escapes.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from deepplan_backend.runtime.plan import (
    DHA,
    ENGINES,
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

PLAN_SUFFIX = ".plan"
MAX_PLAN_BYTES = 64 * 1024 * 1024
"""Largest plan file read; real plans are kilobytes to a few megabytes."""
MAX_LAYERS = 20_000
"""Far above any served model's layer count (BERT-Large has a few hundred)."""
MAX_VARIANTS = 64
MAX_DEVICES = 64
MAX_LAYER_BYTES = 1 << 48
MAX_MS = 1e7
"""Any time above this (almost three hours) is a damaged number, not a measurement."""
MAX_GBPS = 1e6
MAX_FIELDS = MAX_LAYERS + MAX_VARIANTS + 64
"""Top-level (or per-variant) fields scanned before the file is refused: bounds the pre-scan's work too."""

# PlanFile / Variant / Links field numbers whose repetition the pre-scan bounds (see plan.proto).
_PLANFILE_LAYERS, _PLANFILE_LINKS, _PLANFILE_VARIANTS = 5, 6, 8
_VARIANT_SOURCES = 3
_LINKS_CONCURRENT = 3
_CONTINUATION_BYTES = bytes(range(0x80, 0x100))


class PlanNotFound(PlanError):
    """No plan file for the requested key in the repository."""


class StalePlan(PlanError):
    """The plan was made for another version of the model (its fingerprint differs)."""


class ForeignPlan(PlanError):
    """The plan was made for another situation: GPU, dtype, batch size, sequence length or model."""


class CorruptPlan(PlanError):
    """The file is not a valid plan of this schema version."""


def _sanitize(part: str) -> str:
    """One file-name-safe component: runs of anything but letters, digits, '.', '_' and '-' become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", part).strip("._")
    return cleaned or "_"


def plan_filename(key: PlanKey) -> str:
    """File name of a key's plan, e.g. `bert-base.b1.s384.float32.NVIDIA_H200.plan`.

    A plan made for CUDA-graph execution ends in `.graphs.plan`; eager plans keep the name they always had.
    """
    parts = [
        _sanitize(key.model),
        f"b{key.batch_size}",
        f"s{key.seq_len}",
        _sanitize(key.dtype),
        _sanitize(key.gpu_name),
    ]
    if key.execution != "eager":
        parts.append(key.execution)
    return ".".join(parts) + PLAN_SUFFIX


def plan_path(repo: str | os.PathLike[str], key: PlanKey) -> Path:
    """Where a key's plan lives in a repository."""
    return Path(repo) / plan_filename(key)


def _to_message(plan: Plan):
    """The PlanFile message for a plan."""
    msg = PlanFileMessage(
        schema_version=plan.schema_version,
        fingerprint=plan.fingerprint,
        created_at=plan.created_at,
        warm_ms=plan.warm_ms,
    )
    k = plan.key
    msg.key.model, msg.key.batch_size, msg.key.seq_len = k.model, k.batch_size, k.seq_len
    msg.key.dtype, msg.key.gpu_name, msg.key.execution = k.dtype, k.gpu_name, k.execution
    for layer in plan.layers:
        msg.layers.add(
            index=layer.index,
            name=layer.name,
            nbytes=layer.nbytes,
            load_ms=layer.load_ms,
            exec_ms=layer.exec_ms,
            dha_exec_ms=layer.dha_exec_ms,
        )
    msg.links.h2d_gbps = plan.links.h2d_gbps
    msg.links.p2p_gbps = plan.links.p2p_gbps
    msg.links.setup_ms = plan.links.setup_ms
    msg.links.copy_start_ms = plan.links.copy_start_ms
    msg.links.tail_ms = plan.links.tail_ms
    msg.links.copy_efficiency = plan.links.copy_efficiency
    msg.links.peer_chunk_ms = plan.links.peer_chunk_ms
    for n, gbps in sorted(plan.links.concurrent_h2d_gbps.items()):
        msg.links.concurrent_h2d.add(num_devices=n, gbps=gbps)
    for v in plan.variants:
        msg.variants.add(
            engine=v.engine, num_devices=v.num_devices, sources=v.schedule.sources, predicted_ms=v.predicted_ms
        )
    return msg


def plan_to_bytes(plan: Plan) -> bytes:
    """Serialize a plan; refuses (PlanError) a plan that `plan_from_bytes` would not read back."""
    try:
        data = _to_message(plan).SerializeToString()
    except (ValueError, TypeError, OverflowError) as exc:
        raise PlanError(f"{plan.key.model}: plan cannot be stored: {exc}") from exc
    try:
        plan_from_bytes(data, source=f"plan for {plan.key.model}")
    except CorruptPlan as exc:
        raise PlanError(f"refusing to save an invalid plan: {exc}") from exc
    return data


def save_plan(repo: str | os.PathLike[str], plan: Plan) -> Path:
    """Write `plan` into the repository (created if missing), atomically replacing an older file; its path."""
    data = plan_to_bytes(plan)
    path = plan_path(repo, plan.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def list_plans(repo: str | os.PathLike[str]) -> list[Path]:
    """The plan files of a repository, sorted by name (empty if the folder does not exist)."""
    root = Path(repo)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.suffix == PLAN_SUFFIX and p.is_file())


# ---- reading -------------------------------------------------------------------------------------------------


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode one varint at `pos`; ValueError if it runs past `end` or past 10 bytes."""
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Walk a message's fields without decoding them: (field number, wire type, payload start, payload end)."""
    pos = start
    count = 0
    while pos < end:
        count += 1
        if count > MAX_FIELDS:
            raise ValueError(f"more than {MAX_FIELDS} fields in one message")
        tag, pos = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _, after = _varint(data, pos, end)
        elif wire == 1:
            after = pos + 8
        elif wire == 5:
            after = pos + 4
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            after = pos + length
        else:  # groups (3, 4) are not in this schema, 6 and 7 do not exist
            raise ValueError(f"wire type {wire} of field {number}")
        if after > end:
            raise ValueError(f"field {number} runs past the end of its message")
        yield number, wire, pos, after
        pos = after


def _count_repeated(data: bytes, start: int, end: int, number: int) -> int:
    """Elements of repeated field `number` in a message, packed (counted by varint ends) or not."""
    total = 0
    for num, wire, a, b in _fields(data, start, end):
        if num == number:
            total += len(data[a:b].translate(None, _CONTINUATION_BYTES)) if wire == 2 else 1
    return total


def _prescan(data: bytes) -> None:
    """Refuse (ValueError) wire data whose repeated fields exceed the bounds, before protobuf parses it."""
    layers = variants = 0
    for number, wire, a, b in _fields(data, 0, len(data)):
        if number == _PLANFILE_LAYERS:
            layers += 1
            if layers > MAX_LAYERS:
                raise ValueError(f"more than {MAX_LAYERS} layers")
        elif number == _PLANFILE_VARIANTS and wire == 2:
            variants += 1
            if variants > MAX_VARIANTS:
                raise ValueError(f"more than {MAX_VARIANTS} variants")
            if _count_repeated(data, a, b, _VARIANT_SOURCES) > MAX_LAYERS:
                raise ValueError(f"a variant with more than {MAX_LAYERS} sources")
        elif number == _PLANFILE_LINKS and wire == 2:
            if _count_repeated(data, a, b, _LINKS_CONCURRENT) > MAX_DEVICES:
                raise ValueError(f"more than {MAX_DEVICES} concurrent bandwidth entries")


def _finite(value: float, what: str, *, positive: bool = False, limit: float = MAX_MS) -> float:
    """`value` if finite and within [0, limit] (> 0 if `positive`), else ValueError naming `what`."""
    if not math.isfinite(value) or not 0 <= value <= limit or (positive and value == 0):
        raise ValueError(f"{what} is {value!r}")
    return value


def _layers_of(msg) -> tuple[LayerProfile, ...]:
    layers = []
    for pos, row in enumerate(msg.layers):
        if row.index != pos:
            raise ValueError(f"layer row {pos} has index {row.index}")
        if row.nbytes > MAX_LAYER_BYTES:
            raise ValueError(f"layer {pos} claims {row.nbytes} bytes")
        times = [_finite(getattr(row, f), f"layer {pos} {f}") for f in ("load_ms", "exec_ms", "dha_exec_ms")]
        layers.append(LayerProfile(row.index, row.name, row.nbytes, *times))
    return tuple(layers)


def _links_of(msg) -> LinkProfile:
    if not msg.HasField("links"):
        raise ValueError("no link profile")
    concurrent: dict[int, float] = {}
    for entry in msg.links.concurrent_h2d:
        if not 1 <= entry.num_devices <= MAX_DEVICES or entry.num_devices in concurrent:
            raise ValueError(f"bad or repeated concurrent bandwidth entry for {entry.num_devices} devices")
        concurrent[entry.num_devices] = _finite(entry.gbps, "concurrent bandwidth", positive=True, limit=MAX_GBPS)
    return LinkProfile(
        h2d_gbps=_finite(msg.links.h2d_gbps, "h2d_gbps", positive=True, limit=MAX_GBPS),
        p2p_gbps=_finite(msg.links.p2p_gbps, "p2p_gbps", positive=True, limit=MAX_GBPS),
        concurrent_h2d_gbps=concurrent,
        setup_ms=_finite(msg.links.setup_ms, "setup_ms"),
        copy_start_ms=_finite(msg.links.copy_start_ms, "copy_start_ms"),
        tail_ms=_finite(msg.links.tail_ms, "tail_ms"),
        # 0 (unset) in files written before the field existed: copies were modelled at the probed speed.
        copy_efficiency=_finite(msg.links.copy_efficiency or 1.0, "copy_efficiency", positive=True, limit=1.0),
        peer_chunk_ms=_finite(msg.links.peer_chunk_ms, "peer_chunk_ms"),
    )


def _variants_of(msg, num_layers: int) -> tuple[PlanVariant, ...]:
    variants = []
    seen = set()
    for row in msg.variants:
        label = f"variant {row.engine!r}x{row.num_devices}"
        if row.engine not in ENGINES:
            raise ValueError(f"unknown engine in {label}")
        if not 1 <= row.num_devices <= MAX_DEVICES:
            raise ValueError(f"{label}: device count out of range")
        if (row.engine, row.num_devices) in seen:
            raise ValueError(f"{label} appears twice")
        seen.add((row.engine, row.num_devices))
        sources = tuple(row.sources)
        if len(sources) != num_layers:
            raise ValueError(f"{label} has {len(sources)} sources for {num_layers} layers")
        bad = [s for s in sources if s != DHA and not 0 <= s < row.num_devices]
        if bad:
            raise ValueError(f"{label} has source slots {sorted(set(bad))[:5]} out of range")
        predicted = _finite(row.predicted_ms, f"{label} predicted_ms")
        variants.append(PlanVariant(row.engine, row.num_devices, LoadSchedule(sources, row.num_devices), predicted))
    if not variants:
        raise ValueError("no variants")
    return tuple(variants)


def _plan_of(msg) -> Plan:
    """Validate a decoded PlanFile of the current schema and build the Plan (ValueError/PlanError if bad)."""
    if not msg.HasField("key"):
        raise ValueError("no plan key")
    k = msg.key
    key = PlanKey(k.model, k.batch_size, k.seq_len, k.dtype, k.gpu_name, k.execution or "eager")  # "": older file
    if not msg.fingerprint:
        raise ValueError("no model fingerprint")
    layers = _layers_of(msg)
    return Plan(
        key=key,
        fingerprint=msg.fingerprint,
        layers=layers,
        variants=_variants_of(msg, len(layers)),
        links=_links_of(msg),
        warm_ms=_finite(msg.warm_ms, "warm_ms"),
        created_at=msg.created_at,
        schema_version=msg.schema_version,
    )


def plan_from_bytes(data: bytes, source: str = "plan") -> Plan:
    """Decode and validate plan file content; CorruptPlan (naming `source`) for anything wrong."""
    if len(data) > MAX_PLAN_BYTES:
        raise CorruptPlan(f"{source}: {len(data)} bytes is larger than the {MAX_PLAN_BYTES}-byte limit")
    msg = PlanFileMessage()
    try:
        _prescan(data)
        msg.ParseFromString(data)
    except Exception as exc:  # DecodeError, ValueError, RecursionError...: all mean "not a plan file"
        raise CorruptPlan(f"{source}: not a readable plan file ({type(exc).__name__}: {exc})") from exc
    model = msg.key.model or "unknown model"
    if msg.schema_version != SCHEMA_VERSION:
        raise CorruptPlan(
            f"{source} ({model}): schema version {msg.schema_version}, this build reads {SCHEMA_VERSION}; "
            f"re-plan with `python3 -m planner -m {model} -p <repo>`"
        )
    try:
        return _plan_of(msg)
    except (ValueError, PlanError) as exc:
        raise CorruptPlan(f"{source} ({model}): {exc}") from exc


def read_plan(path: str | os.PathLike[str]) -> Plan:
    """Read and validate one plan file, whatever key it holds (for listing and viewing)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_PLAN_BYTES:
                raise CorruptPlan(f"{path}: {size} bytes is larger than the {MAX_PLAN_BYTES}-byte limit")
            data = f.read(size + 1)  # bounded by the size checked above, even if the file grows meanwhile
    except FileNotFoundError as exc:
        raise PlanNotFound(f"{path}: no such plan file") from exc
    except OSError as exc:
        raise PlanError(f"{path}: cannot read plan file: {exc.strerror or exc}") from exc
    return plan_from_bytes(data, source=str(path))


def replan_command(key: PlanKey, repo: str | os.PathLike[str]) -> str:
    """The planner command that makes the plan for `key` (options only where they differ from the defaults)."""
    parts = [f"python3 -m planner -m {key.model} -p {repo}"]
    if key.batch_size != 1:
        parts.append(f"-b {key.batch_size}")
    if key.seq_len != 1:  # ResNet keys hold 1; a text model's default length is planned when -s is left out
        parts.append(f"-s {key.seq_len}")
    if key.dtype != "float32":
        parts.append(f"--dtype {key.dtype}")
    if key.execution == "graphs":
        parts.append("--graphs")
    return " ".join(parts)


def _key_mismatch(found: PlanKey, wanted: PlanKey) -> list[str]:
    """Human-readable differences between the key a file holds and the one asked for."""
    return [
        f"{field} {getattr(found, field)!r} (wanted {getattr(wanted, field)!r})"
        for field in ("model", "batch_size", "seq_len", "dtype", "gpu_name", "execution")
        if getattr(found, field) != getattr(wanted, field)
    ]


def load_plan(repo: str | os.PathLike[str], key: PlanKey, fingerprint: str | None) -> Plan:
    """The plan for `key` from the repository, checked against the model's current fingerprint.

    Raises PlanNotFound (no file; says how to make one), CorruptPlan (unreadable or invalid), ForeignPlan (the
    file was made for another key) or StalePlan (the model changed since). `fingerprint=None` skips the
    staleness check (for tools that only show a plan).
    """
    path = plan_path(repo, key)
    if not path.exists():
        raise PlanNotFound(
            f"no plan for {key.model} (batch {key.batch_size}, seq {key.seq_len}, {key.dtype}, {key.gpu_name}, "
            f"{key.execution} execution) in {repo}: expected {path.name}; make it with `{replan_command(key, repo)}`"
        )
    plan = read_plan(path)
    mismatch = _key_mismatch(plan.key, key)
    if mismatch:
        raise ForeignPlan(
            f"{path} was made for another situation than {key.model}'s: {'; '.join(mismatch)}; "
            f"re-plan with `{replan_command(key, repo)}` on this GPU"
        )
    if fingerprint is not None and plan.fingerprint != fingerprint:
        raise StalePlan(
            f"{path}: {key.model} changed since it was planned (fingerprint {plan.fingerprint[:16]} in the file, "
            f"{fingerprint[:16]} now); re-plan with `{replan_command(key, repo)}`"
        )
    return plan
