"""What a plan says: per layer, whether it is copied to the GPU and over which device's link, or read by DHA.

These frozen dataclasses are the one in-memory form of a plan. The planner builds them, the plan repository
(`plan_repository.py`) stores them as protobuf, and the engine consumes a `LoadSchedule`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DHA = -1
"""Source slot meaning "never copied: the kernel reads the layer from pinned host memory"."""

ENGINES = ("demand", "pipeline", "deepplan")
"""Cold-start modes, spelled as the seed's `-e` option spells them."""

EXECUTIONS = ("eager", "graphs")
"""How the forward runs when the plan is followed: eager PyTorch (host-launched kernels) or replayed CUDA graphs.
The two regimes have different per-layer times (eager batch-1 forwards are bound by host launches), so a plan is
made for one of them and its key says which."""

SCHEMA_VERSION = 1
"""Bumped whenever the plan file's meaning changes; older files are refused, not guessed at."""


class PlanError(Exception):
    """Base of every plan problem; the message names the model and the mismatch."""


@dataclass(frozen=True)
class PlanKey:
    """Which situation a plan was made for: one file per key in a plan repository."""

    model: str
    batch_size: int
    seq_len: int
    dtype: str
    gpu_name: str
    execution: str = "eager"

    def __post_init__(self) -> None:
        if not self.model:
            raise PlanError("plan key needs a model name")
        if self.execution not in EXECUTIONS:
            raise PlanError(f"{self.model}: execution {self.execution!r} is not one of {', '.join(EXECUTIONS)}")
        if self.batch_size < 1 or self.seq_len < 1:
            raise PlanError(f"{self.model}: batch size and sequence length must be >= 1")


@dataclass(frozen=True)
class LayerProfile:
    """Measured costs of one layer (one row of the layer table) on the GPU being planned for.

    Times are milliseconds. `exec_ms` is the span from this layer's start to the next layer's start in a real
    forward with weights resident, so the glue operations between layers are counted and the sum over layers
    is the forward time. `dha_exec_ms` is the same span with this layer's weights read from pinned host memory.
    `load_ms` is the pinned-host-to-GPU copy of the layer's own bytes over one PCIe link alone.
    """

    index: int
    name: str
    nbytes: int
    load_ms: float
    exec_ms: float
    dha_exec_ms: float


@dataclass(frozen=True)
class LinkProfile:
    """Copy bandwidths measured on the planning machine, in GB/s (1e9 bytes per second).

    `concurrent_h2d_gbps[k]` is the aggregate host-to-GPU bandwidth when k GPUs copy at once (host memory, not
    PCIe, bounds it for large k), so one link's share then is `concurrent_h2d_gbps[k] / k`. Despite the class
    name, `setup_ms` (host-side start-up of a cold start) is kept here too: it is a property of the machine.
    """

    h2d_gbps: float
    p2p_gbps: float
    concurrent_h2d_gbps: Mapping[int, float] = field(default_factory=dict)
    setup_ms: float = 0.0
    """Host time a cold start spends before its first kernel launch (arena map, copy issue, binding): nothing
    executes before it, so the simulator starts execution at this time."""
    copy_start_ms: float = 0.0
    """Host time before the first copy can be issued (mapping device memory): copy queues start here."""
    tail_ms: float = 0.0
    """Host time after the last layer (the output's return), plus what the per-layer model misses, fitted on
    real On-Demand cold starts. Plans made before these two fields existed hold 0 in both and all of it in
    `setup_ms`."""
    copy_efficiency: float = 1.0
    """Fraction of the probed link speed that a pipelined cold start's chunk copies reach while the forward runs,
    fitted on real pipelined cold starts (1 in plans made before it existed)."""
    peer_chunk_ms: float = 0.0
    """Host time added to the set-up by each chunk a peer GPU copies (its copy, NVLink forward and events are
    issued before the forward launches), fitted on real PT cold starts (0 in plans made before it existed)."""

    def per_link_gbps(self, num_devices: int) -> float:
        """Bandwidth one link gets while `num_devices` links copy at the same time."""
        aggregate = self.concurrent_h2d_gbps.get(num_devices)
        if aggregate is None:
            return self.h2d_gbps
        return min(self.h2d_gbps, aggregate / num_devices)


@dataclass(frozen=True)
class ModelProfile:
    """Everything the planner needs about one model on one GPU."""

    key: PlanKey
    fingerprint: str
    layers: tuple[LayerProfile, ...]
    links: LinkProfile
    warm_ms: float

    @property
    def total_bytes(self) -> int:
        """Bytes of all layers (shared tensors counted once)."""
        return sum(layer.nbytes for layer in self.layers)


@dataclass(frozen=True)
class LoadSchedule:
    """Per layer, where its bytes come from on a cold start.

    `sources[i]` is `DHA` or a slot in the device list: 0 is the target GPU's own PCIe link, slot s > 0 is the
    s-th peer, which copies over its own link and forwards over NVLink. Slots are positions, not GPU ids, so one
    plan serves `-d 0 2` and `-d 1 3` alike.
    """

    sources: tuple[int, ...]
    num_devices: int = 1

    def __post_init__(self) -> None:
        if self.num_devices < 1:
            raise PlanError("a load schedule needs at least one device")
        for i, src in enumerate(self.sources):
            if src != DHA and not 0 <= src < self.num_devices:
                raise PlanError(f"layer {i}: source slot {src} outside 0..{self.num_devices - 1}")

    @classmethod
    def all_on_target(cls, num_layers: int) -> LoadSchedule:
        """Every layer copied over the target's own link (demand and plain pipeline)."""
        return cls(sources=(0,) * num_layers, num_devices=1)

    @property
    def dha_layers(self) -> tuple[int, ...]:
        """Indices of the layers read in place from host memory."""
        return tuple(i for i, s in enumerate(self.sources) if s == DHA)

    def loaded_bytes(self, nbytes: Sequence[int]) -> int:
        """Bytes that must cross PCIe under this schedule."""
        return sum(n for n, s in zip(nbytes, self.sources, strict=True) if s != DHA)


@dataclass(frozen=True)
class PlanVariant:
    """One way to cold-start the model: an engine mode over a number of devices, and its predicted latency."""

    engine: str
    num_devices: int
    schedule: LoadSchedule
    predicted_ms: float

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise PlanError(f"unknown engine {self.engine!r}; expected one of {', '.join(ENGINES)}")
        if self.schedule.num_devices != self.num_devices:
            raise PlanError(
                f"{self.engine}: schedule is for {self.schedule.num_devices} devices, not {self.num_devices}"
            )


@dataclass(frozen=True)
class Plan:
    """A plan file's content: the profile it was made from and one variant per (engine, device count)."""

    key: PlanKey
    fingerprint: str
    layers: tuple[LayerProfile, ...]
    variants: tuple[PlanVariant, ...]
    links: LinkProfile
    warm_ms: float
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    def variant(self, engine: str, num_devices: int) -> PlanVariant:
        """The variant for an engine mode and device count, or a PlanError naming what the plan does hold."""
        for v in self.variants:
            if v.engine == engine and v.num_devices == num_devices:
                return v
        held = ", ".join(f"{v.engine}x{v.num_devices}" for v in self.variants) or "none"
        raise PlanError(
            f"plan for {self.key.model} has no {engine} variant for {num_devices} device(s) (it holds: {held}); "
            f"re-plan with `python3 -m planner -m {self.key.model} -d <{num_devices} devices>`"
        )
