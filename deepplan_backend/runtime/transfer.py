"""Copy engines: how a layer's bytes travel from host to target, and how compute learns they arrived.

This is the one place that knows about CUDA streams, events and NVLink forwarding. The CPU implementation
runs the same calls synchronously, so the engine's ordering logic is exercised in CI without a GPU.

Source slots (see `LoadSchedule`): slot 0 copies over the target's own PCIe link on a dedicated copy stream;
slot s > 0 copies over peer s's PCIe link into a staging buffer on the peer, then forwards over NVLink.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .cuda_driver import check, driver


class DeviceError(RuntimeError):
    """A device that does not exist, or a device set that cannot do what was asked (e.g. no peer access)."""


@dataclass(frozen=True)
class CopyJob:
    """Copy `src` (host bytes) into `dst` (target bytes) over source slot `slot`."""

    slot: int
    src: torch.Tensor
    dst: torch.Tensor


class Ready(Protocol):
    """Something the compute stream can wait on (a CUDA event), or None on the CPU where copies are done."""


class CopyEngine(Protocol):
    """Issues copies asynchronously and makes the compute stream wait for them."""

    device: torch.device
    num_slots: int

    def issue(self, jobs: Sequence[CopyJob], events: Sequence[object] | None = None) -> list[object]:
        """Start every job, in order per slot; return one readiness token per job.

        With `events` (one per job), each job's completion is recorded into the given event, which then is
        the token: a captured CUDA graph waits on those same event objects.
        """

    def wait(self, token: object) -> None:
        """Make the compute stream wait until the job behind `token` has landed."""

    def open_peer_links(self) -> None:
        """Set up what copies over peer devices need, ahead of the first one."""

    def release(self) -> None:
        """Drop staging buffers (after the compute stream has waited for every token)."""


class CpuCopyEngine:
    """Synchronous copies in host memory; tokens are None. Used in CI and CPU serving."""

    def __init__(self, device: torch.device, num_slots: int = 1) -> None:
        self.device = device
        self.num_slots = num_slots

    def issue(self, jobs: Sequence[CopyJob], events: Sequence[object] | None = None) -> list[object]:
        """Copy every job now (slot order is irrelevant without concurrency); there is nothing to record."""
        for job in jobs:
            _check_slot(job.slot, self.num_slots)
            job.dst.copy_(job.src)
        return [None] * len(jobs)

    def wait(self, token: object) -> None:
        """Nothing to wait for: copies completed in `issue`."""

    def open_peer_links(self) -> None:
        """No peer links on the CPU."""

    def release(self) -> None:
        """Nothing staged."""


STAGING_SLOT_BYTES = 24 << 20
STAGING_SLOTS = 3
"""A peer forwards through a small ring of staging slots: 72 MiB per (peer, target) pair per process, whatever
the model size, instead of a staging copy of its whole share (which would cost a cudaMalloc on every cold start).
A slot holds the largest weight of the zoo's transformer layers (GPT-2-Medium's 16 MiB MLP matrices) whole: the
host issues every piece before the forward launches, at ~25 us each with 8 MiB slots (session 8, 4 x H200), so
fewer, larger pieces shorten a PT cold start's set-up. Three slots keep the peer's PCIe link busy while the
target pulls."""


class _PeerLane:
    """One peer's path to one target, shared by every engine of the process.

    The peer copies over its own PCIe link into a staging ring on the peer; the *target* pulls each piece over
    NVLink on its own stream. Pulling keeps the target's arena private to the target (granting peers access
    to a freshly mapped arena costs as much as mapping it again, on every cold start). Engines that share the
    lane issue into the same streams, so ring reuse is ordered by the streams; a lock keeps one engine's
    pieces from interleaving with another's while issuing.

    Each ring slot owns two driver events, re-recorded for every piece it carries: `staged` (the peer's copy
    into the slot is done; recorded on the peer) and `freed` (the target has pulled it; recorded on the
    target). A stream wait binds to the event's latest record when it is issued, and every wait on a slot's
    event is issued before that event's next record, so reusing them is exact and costs no event creation.
    """

    def __init__(self, peer: torch.device, target: torch.device, cu: Any) -> None:
        _enable_peer_access(target, peer)
        self.h2d = torch.cuda.Stream(peer)
        self.pull = torch.cuda.Stream(target)
        self.ring = torch.empty(STAGING_SLOTS * STAGING_SLOT_BYTES, dtype=torch.uint8, device=peer)
        self.staged = [_driver_event(peer) for _ in range(STAGING_SLOTS)]
        self.freed = [_driver_event(target) for _ in range(STAGING_SLOTS)]
        self.used = [False] * STAGING_SLOTS  # whether the slot's `freed` was ever recorded
        self.next_slot = 0
        self.lock = threading.Lock()
        self.h2d_handle = cu.CUstream(self.h2d.cuda_stream)
        self.pull_handle = cu.CUstream(self.pull.cuda_stream)


def _driver_event(device: torch.device) -> Any:
    """A timing-free driver event in `device`'s primary context (an event is recorded on its own device only)."""
    cu = driver()
    with torch.cuda.device(device):
        torch.cuda.current_stream()  # makes the device's primary context current on this thread
        flags = cu.CUevent_flags.CU_EVENT_DISABLE_TIMING
        return check(cu.cuEventCreate(flags), f"cuEventCreate on {device}", DeviceError)


def _enable_peer_access(target: torch.device, peer: torch.device) -> None:
    """Let `target`'s copy engine read `peer`'s memory directly over NVLink (else copies bounce via the host)."""
    from cuda.bindings import runtime as cudart

    with torch.cuda.device(target):
        torch.cuda.current_stream()  # makes the target's primary context current on this thread
        (err,) = cudart.cudaDeviceEnablePeerAccess(peer.index, 0)
    if err not in (cudart.cudaError_t.cudaSuccess, cudart.cudaError_t.cudaErrorPeerAccessAlreadyEnabled):
        raise DeviceError(f"cannot enable peer access from GPU {target.index} to GPU {peer.index}: {err}")


_lanes: dict[tuple[int, int], _PeerLane] = {}
_lanes_lock = threading.Lock()


class CudaCopyEngine:
    """Copies on dedicated streams of the target and its peers, one CUDA event per job.

    Copies go through the driver's `cuMemcpyAsync` on raw addresses: a few microseconds per call, where
    `Tensor.copy_` costs tens (and, across devices, adds barrier events on the *compute* stream).
    """

    def __init__(self, device: torch.device, peers: Sequence[torch.device] = ()) -> None:
        self._cu = driver()
        self.device = device
        self.peers = list(peers)
        self.num_slots = 1 + len(self.peers)
        self.copy_stream = torch.cuda.Stream(device)
        self._copy_handle = self._cu.CUstream(self.copy_stream.cuda_stream)
        self._lanes: list[_PeerLane] | None = None
        self._events: Sequence[object] | None = None

    def open_peer_links(self) -> None:
        """Create the peer lanes now (peer contexts, staging rings, peer access), not in the first cold start.

        Done lazily, the first PT cold start of a process also paid for the peers' CUDA contexts.
        """
        self._peer_lanes()

    def _peer_lanes(self) -> list[_PeerLane]:
        if self._lanes is None:
            with _lanes_lock:
                keys = [(int(p.index), int(self.device.index)) for p in self.peers]  # type: ignore[arg-type]
                for key, p in zip(keys, self.peers, strict=True):
                    if key not in _lanes:
                        _lanes[key] = _PeerLane(p, self.device, self._cu)
                self._lanes = [_lanes[key] for key in keys]
        return self._lanes

    def _memcpy(self, dst: int, src: int, nbytes: int, handle: object) -> None:
        check(self._cu.cuMemcpyAsync(dst, src, nbytes, handle), f"cuMemcpyAsync of {nbytes} bytes", DeviceError)

    def issue(self, jobs: Sequence[CopyJob], events: Sequence[object] | None = None) -> list[object]:
        """Start target copies first (they are needed first), then each peer's share in layer order."""
        tokens: list[object] = [None] * len(jobs)
        self._events = events
        # Whatever the compute stream did before (e.g. the previous request) must not race with new bytes.
        self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        for k, job in enumerate(jobs):
            _check_slot(job.slot, self.num_slots)
            if job.slot == 0:
                self._memcpy(job.dst.data_ptr(), job.src.data_ptr(), job.src.numel(), self._copy_handle)
                tokens[k] = self._mark(k, self.copy_stream)
        if self.num_slots > 1 and any(job.slot for job in jobs):
            self._issue_peers(jobs, tokens)
        return tokens

    def _issue_peers(self, jobs: Sequence[CopyJob], tokens: list[object]) -> None:
        compute = torch.cuda.current_stream(self.device)
        for s, lane in enumerate(self._peer_lanes()):
            with lane.lock:
                lane.pull.wait_stream(compute)  # the target's previous use of these bytes is over
                for k, job in enumerate(jobs):
                    if job.slot == s + 1:
                        self._forward_through(lane, job)
                        tokens[k] = self._mark(k, lane.pull)

    def _forward_through(self, lane: _PeerLane, job: CopyJob) -> None:
        """Copy one job over the peer's link in ring-slot-sized pieces, each pulled over NVLink once staged."""
        cu = self._cu
        src, dst, total = job.src.data_ptr(), job.dst.data_ptr(), job.src.numel()
        for offset in range(0, total, STAGING_SLOT_BYTES):
            n = min(STAGING_SLOT_BYTES, total - offset)
            slot = lane.next_slot
            lane.next_slot = (slot + 1) % STAGING_SLOTS
            stage = lane.ring.data_ptr() + slot * STAGING_SLOT_BYTES
            if lane.used[slot]:  # the slot's previous bytes must have been pulled before it is overwritten
                check(cu.cuStreamWaitEvent(lane.h2d_handle, lane.freed[slot], 0), "cuStreamWaitEvent", DeviceError)
            self._memcpy(stage, src + offset, n, lane.h2d_handle)
            check(cu.cuEventRecord(lane.staged[slot], lane.h2d_handle), "cuEventRecord", DeviceError)
            check(cu.cuStreamWaitEvent(lane.pull_handle, lane.staged[slot], 0), "cuStreamWaitEvent", DeviceError)
            self._memcpy(dst + offset, stage, n, lane.pull_handle)
            check(cu.cuEventRecord(lane.freed[slot], lane.pull_handle), "cuEventRecord", DeviceError)
            lane.used[slot] = True

    def _mark(self, k: int, stream: torch.cuda.Stream) -> object:
        """Record job k's completion on `stream`: into the caller's event if given, else a new one."""
        if self._events is None:
            return _record(stream)
        event = self._events[k]
        event.record(stream)  # type: ignore[attr-defined]
        return event

    def wait(self, token: object) -> None:
        """Compute stream waits on the job's event (events from peer devices are fine for CUDA)."""
        if token is not None:
            torch.cuda.current_stream(self.device).wait_event(token)  # type: ignore[arg-type]

    def release(self) -> None:
        """Nothing per engine: the staging rings are per process and bounded."""


def _record(stream: torch.cuda.Stream) -> torch.cuda.Event:
    event = torch.cuda.Event()
    event.record(stream)
    return event


def _check_slot(slot: int, num_slots: int) -> None:
    if not 0 <= slot < num_slots:
        raise DeviceError(f"copy over slot {slot}, but only {num_slots} device(s) are configured")


def resolve_devices(device_ids: Sequence[int] | None) -> list[torch.device]:
    """Turn `-d 0 2` into devices (target first), checking they exist and that peers can reach the target.

    Without CUDA (or with no ids and no GPU), returns `[cpu]`; asking for GPUs on a machine without them is
    an error rather than a silent CPU fallback.
    """
    if not device_ids:
        return [torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")]
    if not torch.cuda.is_available():
        raise DeviceError(f"devices {list(device_ids)} requested but CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if len(set(device_ids)) != len(device_ids):
        raise DeviceError(f"device list {list(device_ids)} repeats a device")
    for d in device_ids:
        if not 0 <= d < count:
            raise DeviceError(f"device {d} does not exist: this machine has {count} GPU(s) (0..{count - 1})")
    target = device_ids[0]
    for peer in device_ids[1:]:
        if not torch.cuda.can_device_access_peer(target, peer):
            raise DeviceError(f"GPU {peer} has no peer access to GPU {target}: parallel transmission needs NVLink/P2P")
    return [torch.device("cuda", d) for d in device_ids]


def make_copy_engine(devices: Sequence[torch.device]) -> CopyEngine:
    """The copy engine for a resolved device list (target first)."""
    target = devices[0]
    if target.type == "cpu":
        return CpuCopyEngine(target, num_slots=len(devices))
    return CudaCopyEngine(target, devices[1:])
