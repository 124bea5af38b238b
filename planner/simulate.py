"""Pipeline simulator: predicts a cold start's latency from a model profile and a load schedule.

The model of the hardware, kept deliberately small so the planner can call it thousands of times:

- Each source slot is one sequential copy queue that starts at `links.copy_start_ms` (device memory mapped).
  Slot 0 is the target GPU's own PCIe link; its copies land directly. Slot s > 0 is a peer GPU: it copies its
  layers over its own PCIe link, then forwards each one to the target over NVLink at `links.p2p_gbps`. A peer's
  forward queue is separate from its PCIe queue, so the PCIe copy of layer j overlaps the forward of layer j-1.
- Copies on every queue run in layer order (the engine issues them that way).
- When k slots copy at once, host memory bounds them: each copy takes `load_ms * h2d_gbps / per_link_gbps(k)`.
  k counts the slots that copy at least one layer, and the scaling holds for the whole cold start (a slot that
  finishes early is not credited back; this slightly overestimates, which keeps plans conservative).
- Execution cannot begin before `links.setup_ms`, the host time a cold start spends mapping memory, issuing
  copies and binding weights.
- Layer i starts at max(end of layer i-1, ready_i) and runs `exec_ms`, or `dha_exec_ms` if it is read by DHA,
  in which case it is ready at t=0.
- The cold start ends `links.tail_ms` after the last layer (the output's return, and what this model misses,
  as fitted by the profiler on real cold starts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


def ready_times(profile: ModelProfile, schedule: LoadSchedule) -> list[float]:
    """When each layer's weights are usable on the target: 0 for DHA, else the end of its copy or forward."""
    sources = schedule.sources
    slots = {s for s in sources if s != DHA}
    scale = copy_scale(profile, len(slots))
    p2p = profile.links.p2p_gbps
    first = profile.links.copy_start_ms
    h2d_free: dict[int, float] = {}  # when each slot's PCIe queue is next free
    fwd_free: dict[int, float] = {}  # when each peer's NVLink forward queue is next free
    ready = [0.0] * len(sources)
    for i, (layer, src) in enumerate(zip(profile.layers, sources, strict=True)):
        if src == DHA:
            continue
        copied = h2d_free.get(src, first) + layer.load_ms * scale
        h2d_free[src] = copied
        if src == 0:
            ready[i] = copied
        else:
            forwarded = max(copied, fwd_free.get(src, 0.0)) + transfer_ms(layer.nbytes, p2p)
            fwd_free[src] = forwarded
            ready[i] = forwarded
    return ready


def execute(profile: ModelProfile, sources: Sequence[int], ready: Sequence[float]) -> SimResult:
    """Run the layers in order, each as soon as the previous one ended and its weights are ready."""
    start = [0.0] * len(ready)
    end = [0.0] * len(ready)
    clock = profile.links.setup_ms  # nothing executes before the host has set the cold start up
    for i, (layer, src) in enumerate(zip(profile.layers, sources, strict=True)):
        begin = max(clock, ready[i])
        clock = begin + (layer.dha_exec_ms if src == DHA else layer.exec_ms)
        start[i] = begin
        end[i] = clock
    total = clock + profile.links.tail_ms
    return SimResult(ready_ms=tuple(ready), start_ms=tuple(start), end_ms=tuple(end), total_ms=total)


def simulate(profile: ModelProfile, schedule: LoadSchedule) -> SimResult:
    """Predict the pipelined cold start (pipeline and deepplan engines) of `profile` under `schedule`."""
    check_profile(profile)
    _check_schedule(profile, schedule)
    return execute(profile, schedule.sources, ready_times(profile, schedule))


class CostModel:
    """The simulator reduced to flat lists, for the planner's inner loops (thousands of calls per plan).

    Build it once per profile (which it checks), then `total(sources)` predicts a schedule's latency with the
    same rules as `simulate` without building a timeline or a LoadSchedule.
    """

    def __init__(self, profile: ModelProfile) -> None:
        check_profile(profile)
        self.profile = profile
        self.load = [layer.load_ms for layer in profile.layers]
        self.exec = [layer.exec_ms for layer in profile.layers]
        self.dha = [layer.dha_exec_ms for layer in profile.layers]
        self.forward = [transfer_ms(layer.nbytes, profile.links.p2p_gbps) for layer in profile.layers]
        self._scales: dict[int, float] = {}

    def scale(self, slots_in_use: int) -> float:
        """Cached `copy_scale` for this profile."""
        if slots_in_use not in self._scales:
            self._scales[slots_in_use] = copy_scale(self.profile, slots_in_use)
        return self._scales[slots_in_use]

    def total(self, sources: Sequence[int]) -> float:
        """Predicted latency of the schedule with per-layer `sources` (same rules as `simulate`)."""
        used = set(sources)
        used.discard(DHA)
        scale = self.scale(len(used))
        h2d_free = [self.profile.links.copy_start_ms] * (max(used) + 1 if used else 1)
        fwd_free = list(h2d_free)
        clock = self.profile.links.setup_ms
        load, exe, dha, forward = self.load, self.exec, self.dha, self.forward
        for i, src in enumerate(sources):
            if src == DHA:
                clock += dha[i]
                continue
            ready = h2d_free[src] + load[i] * scale
            h2d_free[src] = ready
            if src:
                ready = (ready if ready > fwd_free[src] else fwd_free[src]) + forward[i]
                fwd_free[src] = ready
            clock = (clock if clock > ready else ready) + exe[i]
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
    return execute(profile, (0,) * len(profile.layers), ready)


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
