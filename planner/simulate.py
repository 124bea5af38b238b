"""Pipeline simulator: predicts a cold start's latency from a model profile and a load schedule.

The model of the hardware, kept deliberately small so the planner can call it thousands of times:

- Copies travel in the engine's chunks (`chunking.chunk_runs`: consecutive layers of one source slot, about
  2 MiB each), and a layer is usable when its whole chunk has landed. A chunk of one layer costs that layer's
  profiled `load_ms`; a merged chunk costs its bytes at the link's bandwidth plus one copy's fixed cost
  (`copy_overhead_ms`), since its layers' own small-copy overheads are never paid. This is what keeps the
  planner from reading a ResNet's many small layers by DHA only to save overheads the engine does not have.
- Each source slot is one sequential copy queue that starts at `links.copy_start_ms` (device memory mapped).
  Slot 0 is the target GPU's own PCIe link; its copies land directly. Slot s > 0 is a peer GPU: it copies its
  chunks over its own PCIe link, then forwards each one to the target over NVLink at `links.p2p_gbps`. A peer's
  forward queue is separate from its PCIe queue, so the PCIe copy of chunk j overlaps the forward of chunk j-1.
- Copies on every queue run in layer order (the engine issues them that way).
- Chunk copies reach `links.copy_efficiency` of that speed: a pipelined cold start's copies share the host,
  the PCIe root and the GPU with the running forward, and on an H200 reach ~75-85 % of the probed bandwidth.
  The factor is fitted on real pipelined cold starts; On-Demand's single transfer runs at the probed speed.
- When k slots copy at once, host memory bounds them: each copy takes `copy_ms * h2d_gbps / per_link_gbps(k)`.
  k counts the slots that copy at least one layer, and the scaling holds for the whole cold start (a slot that
  finishes early is not credited back; this slightly overestimates, which keeps plans conservative).
- Execution cannot begin before `links.setup_ms`, the host time a cold start spends mapping memory, issuing
  copies and binding weights, plus `links.peer_chunk_ms` per chunk that a peer copies: a PT chunk costs the
  host a copy on the peer, an NVLink forward and their events, all issued before the forward launches.
- Layer i starts at max(end of layer i-1, ready_i) and runs `exec_ms`, or `dha_exec_ms` if it is read by DHA,
  in which case it is ready at t=0.
- The cold start ends `links.tail_ms` after the last layer (the output's return, and what this model misses,
  as fitted by the profiler on real On-Demand cold starts).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from deepplan_backend.runtime.chunking import chunk_runs
from deepplan_backend.runtime.plan import DHA, ENGINES, LoadSchedule, ModelProfile, PlanError

STALL_EPS_MS = 1e-9
"""Waits shorter than this are float noise, not stalls."""


@dataclass(frozen=True)
class SimResult:
    """A predicted cold-start timeline, milliseconds from the start of the cold start.

    `ready_ms[i]` is when layer i's weights are usable on the target (0 for DHA layers), `start_ms[i]` and
    `end_ms[i]` bound its execution. `total_ms` (the predicted latency) is the end of the last layer plus the
    profile's tail.
    """

    ready_ms: tuple[float, ...]
    start_ms: tuple[float, ...]
    end_ms: tuple[float, ...]
    total_ms: float

    def stall_ms(self, index: int) -> float:
        """How long layer `index` waited for its weights after the previous layer had finished."""
        prev_end = self.end_ms[index - 1] if index > 0 else 0.0
        return max(0.0, self.start_ms[index] - prev_end)

    def first_stall(self, begin: int = 0) -> int | None:
        """Index of the first layer at or after `begin` whose execution waited for its load, or None."""
        for i in range(begin, len(self.start_ms)):
            if self.stall_ms(i) > STALL_EPS_MS:
                return i
        return None

    @property
    def total_stall_ms(self) -> float:
        """Time the GPU sat idle waiting for weights, summed over layers."""
        return sum(self.stall_ms(i) for i in range(len(self.start_ms)))


def transfer_ms(nbytes: int, gbps: float) -> float:
    """Milliseconds to move `nbytes` at `gbps` (1e9 bytes per second)."""
    return nbytes / (gbps * 1e9) * 1e3


def check_profile(profile: ModelProfile) -> None:
    """Raise PlanError naming the model and the field if the profile cannot be simulated."""
    name = profile.key.model
    links = profile.links
    for label, value in (("h2d_gbps", links.h2d_gbps), ("p2p_gbps", links.p2p_gbps)):
        if not (math.isfinite(value) and value > 0):
            raise PlanError(f"{name}: link profile {label} must be a positive number, got {value!r}")
    if not (math.isfinite(links.copy_efficiency) and 0 < links.copy_efficiency <= 1):
        raise PlanError(f"{name}: link profile copy_efficiency must be within (0, 1], got {links.copy_efficiency!r}")
    if not (math.isfinite(links.peer_chunk_ms) and links.peer_chunk_ms >= 0):
        raise PlanError(f"{name}: link profile peer_chunk_ms must be finite and >= 0, got {links.peer_chunk_ms!r}")
    for pos, layer in enumerate(profile.layers):
        if layer.index != pos:
            raise PlanError(f"{name}: layer at position {pos} has index {layer.index}; layers must be in order")
        if layer.nbytes < 0:
            raise PlanError(f"{name}: layer {pos} ({layer.name}) has negative size {layer.nbytes}")
        for label, value in (
            ("load_ms", layer.load_ms),
            ("exec_ms", layer.exec_ms),
            ("dha_exec_ms", layer.dha_exec_ms),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise PlanError(f"{name}: layer {pos} ({layer.name}) {label} must be finite and >= 0, got {value!r}")


def _check_schedule(profile: ModelProfile, schedule: LoadSchedule) -> None:
    """Raise PlanError if the schedule does not describe this profile's layers."""
    if len(schedule.sources) != len(profile.layers):
        raise PlanError(
            f"{profile.key.model}: schedule has {len(schedule.sources)} sources but the profile has "
            f"{len(profile.layers)} layers"
        )


def copy_scale(profile: ModelProfile, slots_in_use: int) -> float:
    """Factor by which one layer's copy slows down while `slots_in_use` links copy at once."""
    if slots_in_use <= 1:
        # Copies on one link alone run at the measured per-layer speed; concurrent_h2d_gbps[1] (if present) is
        # the same measurement taken another way and must not rescale it.
        return 1.0
    share = profile.links.per_link_gbps(slots_in_use)
    if not (math.isfinite(share) and share > 0):
        raise PlanError(f"{profile.key.model}: link share for {slots_in_use} devices is {share!r} GB/s")
    return max(1.0, profile.links.h2d_gbps / share)


def copy_overhead_ms(profile: ModelProfile) -> float:
    """One copy's fixed cost on this machine.

    The median of what each layer's profiled copy took beyond its bytes at the link's bandwidth (never negative).
    """
    h2d = profile.links.h2d_gbps
    extra = [max(0.0, layer.load_ms - transfer_ms(layer.nbytes, h2d)) for layer in profile.layers if layer.nbytes]
    return statistics.median(extra) if extra else 0.0


def copy_saved_ms(profile: ModelProfile) -> list[float]:
    """Per layer, the most copy time that reading it by DHA can save.

    That is its own profiled copy when it travels alone, else its bytes at link speed plus at most one copy's
    fixed cost (the chunk it leaves still goes).
    """
    overhead = copy_overhead_ms(profile)
    h2d = profile.links.h2d_gbps
    eff = profile.links.copy_efficiency
    return [min(layer.load_ms, transfer_ms(layer.nbytes, h2d) + overhead) / eff for layer in profile.layers]


class _Copies:
    """Per-layer copy costs of one profile, and the chunked copy timeline of any schedule over them."""

    def __init__(self, profile: ModelProfile) -> None:
        links = profile.links
        self.profile = profile
        self.sizes = [layer.nbytes for layer in profile.layers]
        eff = links.copy_efficiency  # chunk copies beside a running forward: slower than the link probe
        self.load = [layer.load_ms / eff for layer in profile.layers]
        self.stream = [transfer_ms(n, links.h2d_gbps) / eff for n in self.sizes]
        self.overhead = copy_overhead_ms(profile) / eff
        self.p2p = links.p2p_gbps
        self.start = links.copy_start_ms
        self._scales: dict[int, float] = {}

    def scale(self, slots_in_use: int) -> float:
        """Cached `copy_scale` for this profile."""
        if slots_in_use not in self._scales:
            self._scales[slots_in_use] = copy_scale(self.profile, slots_in_use)
        return self._scales[slots_in_use]

    def arrivals(self, sources: Sequence[int]) -> tuple[list[float], float]:
        """When each layer's weights are usable on the target, and when the forward can launch.

        A layer is usable when its chunk has landed; DHA layers are ready at 0, and so is a chunk of layers with no
        bytes of their own (the engine waits for nothing there). The launch is the host set-up, longer by the issue
        cost of every chunk a peer copies: one pass over the chunks gives both (the planner's inner loops call this
        thousands of times).
        """
        used = {s for s in sources if s != DHA}
        scale = self.scale(len(used))
        h2d_free: dict[int, float] = {}  # when each slot's PCIe queue is next free
        fwd_free: dict[int, float] = {}  # when each peer's NVLink forward queue is next free
        ready = [0.0] * len(sources)
        peer_chunks = 0
        for run in chunk_runs(sources, self.sizes):
            nbytes = sum(self.sizes[i] for i in run)
            if not nbytes:
                continue
            if len(run) == 1:
                copy_ms = self.load[run[0]]
            else:
                copy_ms = sum(self.stream[i] for i in run) + self.overhead
            src = sources[run[0]]
            landed = h2d_free.get(src, self.start) + copy_ms * scale
            h2d_free[src] = landed
            if src != 0:
                peer_chunks += 1
                landed = max(landed, fwd_free.get(src, 0.0)) + transfer_ms(nbytes, self.p2p)
                fwd_free[src] = landed
            for i in run:
                ready[i] = landed
        links = self.profile.links
        return ready, links.setup_ms + links.peer_chunk_ms * peer_chunks


def peer_chunk_count(sources: Sequence[int], sizes: Sequence[int]) -> int:
    """How many chunks (with bytes) peer GPUs copy under `sources`: what PT adds to a cold start's host set-up.

    The count `_Copies.arrivals` charges (chunk runs never hold DHA layers).
    """
    return sum(1 for run in chunk_runs(sources, sizes) if sources[run[0]] != 0 and any(sizes[i] for i in run))


def execute(profile: ModelProfile, sources: Sequence[int], ready: Sequence[float], launch_ms: float) -> SimResult:
    """Run the layers in order, each as soon as the previous one ended and its weights are ready.

    Nothing executes before `launch_ms`, when the host has set the cold start up.
    """
    start = [0.0] * len(ready)
    end = [0.0] * len(ready)
    clock = launch_ms
    for i, (layer, src) in enumerate(zip(profile.layers, sources, strict=True)):
        begin = max(clock, ready[i])
        clock = begin + (layer.dha_exec_ms if src == DHA else layer.exec_ms)
        start[i] = begin
        end[i] = clock
    total = clock + profile.links.tail_ms
    return SimResult(ready_ms=tuple(ready), start_ms=tuple(start), end_ms=tuple(end), total_ms=total)


def simulate(profile: ModelProfile, schedule: LoadSchedule) -> SimResult:
    """Predict the pipelined cold start (pipeline and deepplan engines) of `profile` under `schedule`."""
    model = CostModel(profile)  # checks the profile
    _check_schedule(profile, schedule)
    return model.timeline(schedule.sources)


class CostModel:
    """The simulator reduced to flat lists, for the planner's inner loops (thousands of calls per plan).

    Build it once per profile (which it checks), then `total(sources)` predicts a schedule's latency with the
    same rules as `simulate` without building a timeline or a LoadSchedule.
    """

    def __init__(self, profile: ModelProfile) -> None:
        check_profile(profile)
        self.profile = profile
        self.copies = _Copies(profile)
        self.exec = [layer.exec_ms for layer in profile.layers]
        self.dha = [layer.dha_exec_ms for layer in profile.layers]

    def scale(self, slots_in_use: int) -> float:
        """Cached `copy_scale` for this profile."""
        return self.copies.scale(slots_in_use)

    def timeline(self, sources: Sequence[int]) -> SimResult:
        """The whole predicted timeline of the schedule with per-layer `sources` (what `simulate` returns)."""
        return execute(self.profile, sources, *self.copies.arrivals(sources))

    def total(self, sources: Sequence[int]) -> float:
        """Predicted latency of the schedule with per-layer `sources` (same rules as `simulate`)."""
        ready, clock = self.copies.arrivals(sources)
        exe, dha = self.exec, self.dha
        for i, src in enumerate(sources):
            if src == DHA:
                clock += dha[i]
            else:
                clock = (clock if clock > ready[i] else ready[i]) + exe[i]
        return clock + self.profile.links.tail_ms


def simulate_total(profile: ModelProfile, schedule: LoadSchedule) -> float:
    """Predicted latency only (checks the profile; loops that call it often should hold a CostModel)."""
    _check_schedule(profile, schedule)
    return CostModel(profile).total(schedule.sources)


def predict_demand(profile: ModelProfile) -> SimResult:
    """Predict the on-demand cold start: copy every byte over the target's link, synchronize, then run.

    The demand engine copies the host store's packed buffer in one transfer, so the copy runs at the link's
    bandwidth (`total_bytes / h2d_gbps`) rather than paying each layer's small-copy overhead.
    """
    check_profile(profile)
    loaded = profile.links.copy_start_ms + transfer_ms(profile.total_bytes, profile.links.h2d_gbps)
    ready = [loaded] * len(profile.layers)
    return execute(profile, (0,) * len(profile.layers), ready, profile.links.setup_ms)


def predict(profile: ModelProfile, engine: str, schedule: LoadSchedule) -> SimResult:
    """Predict a cold start for an engine mode ("demand" ignores the schedule beyond its length)."""
    if engine not in ENGINES:
        raise PlanError(f"{profile.key.model}: unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "demand":
        _check_schedule(profile, schedule)
        return predict_demand(profile)
    if engine == "pipeline" and schedule.dha_layers:
        raise PlanError(
            f"{profile.key.model}: the pipeline engine copies every layer, but the schedule reads layers "
            f"{list(schedule.dha_layers)[:8]} by DHA"
        )
    return simulate(profile, schedule)
