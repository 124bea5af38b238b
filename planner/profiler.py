"""Measure what the planner needs on the device planned for: per-layer copy/exec/DHA times, link bandwidths.

A layer's exec time is the span between its forward pre-hook and the next layer's in a real forward (device
events on GPU, the host clock on CPU), so glue operations between layers are counted once and the per-layer
times add up to the forward. DHA times come from the same forward with every layer bound to pinned host
memory; each layer's span then only reads its own weights over PCIe.

Two regimes, because a plan is only as good as the times it was made from:

- eager (default): the forward as eager PyTorch runs it. At batch 1 the host's kernel launches pace the GPU,
  so spans hold launch time, and the set-up term is measured from eager pipelined cold starts.
- graphs (``graphs=True``, GPU only): the forward as a CUDA-graph replay runs it, all kernels queued at once.
  A spin kernel holds the stream while the host enqueues the whole forward, so every span is GPU time alone
  (checked: the spin must still be running when the host has finished, else it is lengthened and the sample
  taken again); the set-up term comes from graph-replayed cold starts. Copies cost the same in both regimes,
  but a GPU-bound forward hides far less of them, so DHA and PT pay off on more layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from deepplan_backend.runtime.engine import ColdStartEngine, InferenceResult
from deepplan_backend.runtime.layers import LayerTable
from deepplan_backend.runtime.plan import DHA, LayerProfile, LinkProfile, LoadSchedule, ModelProfile, PlanError
from deepplan_backend.runtime.prepared import PreparedModel, gpu_name

LINK_PROBE_BYTES = 256 << 20
LINK_WARMUP_S = 0.3
"""Every link copies this long before the bandwidths are timed (see `measure_links`)."""
log = logging.getLogger(__name__)


HOLD_CYCLES_PER_MS = 4_000_000
"""Spin-kernel cycles per millisecond of host launch time to cover: twice the ~2 GHz clock of today's GPUs."""
HOLD_TRIES = 3
"""Spin lengths tried per sample (each twice the last) before the regime is taken as queue-limited."""


class _Clock:
    """Device events on CUDA (what the GPU timeline did), the host clock on CPU (where work is synchronous).

    With `gpu_bound`, `timed` holds the stream with a spin kernel while the host enqueues the work, so device
    spans measure GPU time only (the graph-replay regime).
    """

    def __init__(self, device: torch.device, gpu_bound: bool = False) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.gpu_bound = gpu_bound and self.cuda
        self.hold_cycles = 0
        self.queue_limited = False

    def timed(self, work: Callable[[], None]) -> tuple[object, object]:
        """(start, end) marks around `work()`; in the GPU-bound regime, retried until the spin covered it."""
        if not self.gpu_bound:
            start = self.mark()
            work()
            return start, self.mark()
        if not self.hold_cycles:  # first use: size the spin from the work's host time
            t0 = time.perf_counter()
            work()
            self.sync()
            self.hold_cycles = max(1, int((time.perf_counter() - t0) * 1e3 * HOLD_CYCLES_PER_MS))
        for _ in range(1 if self.queue_limited else HOLD_TRIES):
            with torch.cuda.device(self.device):
                torch.cuda._sleep(self.hold_cycles)
            start = self.mark()
            work()
            end = self.mark()
            if not start.query():  # type: ignore[attr-defined]  # GPU still spinning: all of the work was queued
                return start, end
            self.sync()
            if not self.queue_limited:
                self.hold_cycles *= 2
        if not self.queue_limited:
            # The host waited for the GPU inside the forward (a synchronisation in the model, or more launches than
            # the device queue holds), so a longer spin cannot help; spans after that point include host pacing.
            # Seen for BERT-Base/Large on an H200, whose forwards at seq 384 are GPU-bound anyway.
            self.queue_limited = True
            log.warning("%s: forward not queued ahead of the GPU; graph-regime times are upper bounds", self.device)
        return start, end

    def mark(self) -> object:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def elapsed_ms(self, a: object, b: object) -> float:
        if self.cuda:
            return float(a.elapsed_time(b))  # type: ignore[attr-defined]
        return (b - a) * 1e3  # type: ignore[operator]

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def _segment_times(engine: ColdStartEngine, inputs: dict[str, torch.Tensor], clock: _Clock) -> list[float]:
    """One forward; per layer, the time from its pre-hook to the next observed layer's (0 for unobserved)."""
    table = engine.store.table
    modules = dict(engine.model.module.named_modules())
    marks: list[tuple[int, object]] = []
    handles = [
        modules[layer.name].register_forward_pre_hook(lambda _m, _a, i=layer.index: marks.append((i, clock.mark())))
        for layer in table
        if layer.observed
    ]
    device_inputs = engine._to_device(inputs)

    def forward() -> None:
        marks.clear()  # a GPU-bound retry starts over
        engine.model.module(**device_inputs)

    try:
        with torch.inference_mode():
            start, end = clock.timed(forward)
    finally:
        for h in handles:
            h.remove()
    clock.sync()
    times = [0.0] * len(table)
    first_calls: dict[int, object] = {}
    for index, mark in marks:
        first_calls.setdefault(index, mark)  # a layer called twice is timed from its first call
    bounds = list(first_calls.items())
    for k, (index, mark) in enumerate(bounds):
        begin = start if k == 0 else mark
        finish = bounds[k + 1][1] if k + 1 < len(bounds) else end
        times[index] = clock.elapsed_ms(begin, finish)
    return times


def _forward_ms(engine: ColdStartEngine, inputs: dict[str, torch.Tensor], clock: _Clock) -> list[float]:
    """One forward without hooks: the duration the per-layer spans must add up to."""
    device_inputs = engine._to_device(inputs)
    with torch.inference_mode():
        start, end = clock.timed(lambda: engine.model.module(**device_inputs))
    clock.sync()
    return [clock.elapsed_ms(start, end)]


def _calibrated(spans: list[float], forward_ms: float) -> list[float]:
    """Scale per-layer spans so they add up to the forward measured without hooks.

    The hooks that mark layer boundaries cost host time, and when the forward is launch-bound (small batch,
    eager mode) that time shows up in the GPU timeline as well; scaling removes it proportionally.
    """
    total = sum(spans)
    if total <= 0:
        return spans
    return [t * forward_ms / total for t in spans]


def _median_runs(run: Callable[[], list[float]], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        run()
    samples = [run() for _ in range(repeats)]
    return [statistics.median(col) for col in zip(*samples, strict=True)]


def _layer_load_times(prepared: PreparedModel, device: torch.device, clock: _Clock) -> list[float]:
    """Copy every layer's packed bytes alone, back to back on one stream, timing each copy."""
    store = prepared.store
    dst = torch.empty(prepared.table.total_bytes, dtype=torch.uint8, device=device)
    times = []
    stream = torch.cuda.Stream(device) if clock.cuda else None
    ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with ctx:
        marks = [clock.mark()]
        for layer in prepared.table:
            start, end = store.layer_range(layer.index)
            dst[start:end].copy_(store.buffer[start:end], non_blocking=True)
            marks.append(_mark_on(clock, stream))
    clock.sync()
    if stream is not None:
        stream.synchronize()
    for a, b in zip(marks, marks[1:], strict=False):
        times.append(clock.elapsed_ms(a, b))
    del dst
    return times


def _mark_on(clock: _Clock, stream: object) -> object:
    if stream is None:
        return clock.mark()
    event = torch.cuda.Event(enable_timing=True)
    event.record(stream)  # type: ignore[arg-type]
    return event


def measure_links(devices: Sequence[torch.device], nbytes: int = LINK_PROBE_BYTES) -> LinkProfile:
    """Host-to-device bandwidth alone and with k devices copying at once, and peer-to-target (NVLink)."""
    target = devices[0]
    if target.type != "cuda":
        src = torch.empty(nbytes, dtype=torch.uint8)
        dst = torch.empty_like(src)
        gbps = nbytes / _best_seconds(lambda: dst.copy_(src), lambda: None) / 1e9
        return LinkProfile(h2d_gbps=gbps, p2p_gbps=gbps, concurrent_h2d_gbps={1: gbps})
    host = torch.empty(nbytes * len(devices), dtype=torch.uint8, pin_memory=True)
    dsts = [torch.empty(nbytes, dtype=torch.uint8, device=d) for d in devices]
    streams = [torch.cuda.Stream(d) for d in devices]

    def copy_on(k: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(k):
                with torch.cuda.stream(streams[i]):
                    dsts[i].copy_(host[i * nbytes : (i + 1) * nbytes], non_blocking=True)

        return run

    def sync_all() -> None:
        for s in streams:
            s.synchronize()

    # An idle GPU's PCIe link can sit in a power-saving state and speed up only under load. In session 7's call 9
    # (4 x H100, a fresh process) the single-GPU probe came first and read 36.9 GB/s, then 53 GB/s per GPU with two
    # copying at once, and On-Demand's 475 MiB copy ran at about 50 GB/s or more. Run on H200 since (54.5-55.1 GB/s),
    # not yet on an H100.
    deadline = time.perf_counter() + LINK_WARMUP_S
    while time.perf_counter() < deadline:
        copy_on(len(devices))()
        sync_all()
    concurrent = {k: k * nbytes / _best_seconds(copy_on(k), sync_all) / 1e9 for k in range(1, len(devices) + 1)}
    p2p = concurrent[1]
    if len(devices) > 1:
        peer_src = dsts[1]

        def peer_copy() -> None:
            with torch.cuda.stream(streams[0]):
                dsts[0].copy_(peer_src, non_blocking=True)

        p2p = nbytes / _best_seconds(peer_copy, sync_all) / 1e9
    torch.cuda.empty_cache()
    return LinkProfile(h2d_gbps=concurrent[1], p2p_gbps=p2p, concurrent_h2d_gbps=concurrent)


def _best_seconds(run: Callable[[], object], sync: Callable[[], None], repeats: int = 5) -> float:
    """Median wall time of `run` (synchronized), after one warm-up."""
    run()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        sync()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def fold_shared_penalties(table: LayerTable, exec_ms: list[float], dha_ms: list[float]) -> list[float]:
    """DHA times where a layer reading a *shared* tensor charges its DHA penalty to the tensor's owner.

    A tensor is DHA exactly when its owner is (GPT-2's LM head reads the tied embedding table): choosing the
    embedding for DHA because lookups are cheap would make the LM head's full GEMM read 150 MB over PCIe.
    The planner only decides owners, so the owner must carry the whole cost of its decision.
    """
    folded = list(dha_ms)
    for layer in table:
        for owner in {s.owner_layer for s in layer.shared} - {layer.index}:
            penalty = max(0.0, folded[layer.index] - exec_ms[layer.index])
            folded[owner] += penalty
            folded[layer.index] -= penalty
    return folded


MIN_COPY_EFFICIENCY = 0.2
"""Lowest copy efficiency a fit may return: below it the cold starts measured something other than copies."""


def fit_peer_issue(profile: ModelProfile, schedule: LoadSchedule, measured: Sequence[InferenceResult]) -> LinkProfile:
    """The profile's links with `peer_chunk_ms` fitted on real PT cold starts of `schedule` (host terms fitted).

    A PT cold start's set-up exceeds the single-GPU one by the host work of each chunk a peer copies (measured
    on 4 x H200: ~2 ms of set-up on one GPU, 3-4 ms on two or four for 1.4 GB models), so that excess, per peer
    chunk, is the term.
    """
    from .simulate import peer_chunk_count

    phases = [r.phases for r in measured if r.phases is not None]
    chunks = peer_chunk_count(schedule.sources, [layer.nbytes for layer in profile.layers])
    if not phases or not chunks:
        return profile.links
    excess = statistics.median(p.launch_ms for p in phases) - profile.links.setup_ms
    return dataclasses.replace(profile.links, peer_chunk_ms=max(0.0, excess) / chunks)


def fit_host_terms(
    profile: ModelProfile, pipelined: Sequence[InferenceResult], demand: Sequence[InferenceResult]
) -> LinkProfile:
    """The profile's links with the host terms of a cold start, fitted on real cold starts of `all_on_target`.

    - `copy_start_ms` and `setup_ms` are the medians of the pipelined cold starts' own milestones (memory
      mapped; copies issued and weights bound).
    - `tail_ms` is what On-Demand cold starts (`demand`) take beyond the model: one transfer at the probed link
      speed, then the forward. It holds the output's return and host work after the last layer.
    - `copy_efficiency` is then the fraction of the link speed at which the simulated pipelined cold start
      takes as long as the measured one (at most 1: a model that is faster than measured at full speed is
      execution-bound, and copies are not what it misses).

    Two terms from two kinds of cold start: a single additive tail fitted on pipelining alone was right for that
    schedule only; it charged copy slowdowns to On-Demand and PT, and execution slowdowns to DHA schedules.
    """
    from .simulate import predict_demand, simulate

    phases = [r.phases for r in pipelined if r.phases is not None]
    if not phases or not demand:
        raise PlanError(f"{profile.key.model}: no pipelined and On-Demand cold starts to fit the host terms on")
    copy_start = statistics.median(p.mapped_ms for p in phases)
    setup = max(copy_start, statistics.median(p.launch_ms for p in phases))
    links = dataclasses.replace(
        profile.links, copy_start_ms=copy_start, setup_ms=setup, tail_ms=0.0, copy_efficiency=1.0
    )
    demand_ms = statistics.median(r.latency_ms for r in demand)
    tail = max(0.0, demand_ms - predict_demand(dataclasses.replace(profile, links=links)).total_ms)
    links = dataclasses.replace(links, tail_ms=tail)
    target_ms = statistics.median(r.latency_ms for r in pipelined)
    schedule = LoadSchedule.all_on_target(len(profile.layers))

    def predicted(efficiency: float) -> float:
        fitted = dataclasses.replace(links, copy_efficiency=efficiency)
        return simulate(dataclasses.replace(profile, links=fitted), schedule).total_ms

    if predicted(1.0) >= target_ms:
        return links
    low, high = MIN_COPY_EFFICIENCY, 1.0  # predicted() falls as the efficiency rises
    if predicted(low) <= target_ms:
        return dataclasses.replace(links, copy_efficiency=low)
    for _ in range(30):  # 2**-30 of the interval: far below what a cold start can resolve
        mid = (low + high) / 2
        if predicted(mid) > target_ms:
            low = mid
        else:
            high = mid
    return dataclasses.replace(links, copy_efficiency=(low + high) / 2)


def cold_starts(
    engine: ColdStartEngine,
    inputs: dict[str, torch.Tensor],
    schedules: Sequence[LoadSchedule],
    warmup: int,
    repeats: int,
    overlaps: Sequence[bool] | None = None,
    warm: list[float] | None = None,
) -> list[list[InferenceResult]]:
    """`repeats` real cold starts of each schedule after `warmup` rounds; the device is left empty.

    `overlaps[i]` False runs schedule i On-Demand (copy all, then run); default: every schedule pipelined.
    With a `warm` list, each timed cold start is followed by one warm request, whose latency is appended to it:
    the engine's warm speed sampled between cold starts, as a server (and the benchmark) sees it.
    The schedules are sampled in alternation, so that drifts hit them alike. With graphs, each schedule's forward
    is captured (on its first warm request) before any cold start is timed, so every timed one replays it.
    """
    modes = list(overlaps) if overlaps is not None else [True] * len(schedules)
    if len(modes) != len(schedules):
        raise ValueError(f"{len(modes)} overlap flags for {len(schedules)} schedules")
    if engine.graphs:
        for schedule, overlap in zip(schedules, modes, strict=True):
            engine.evict()
            engine.infer(inputs, schedule, overlap)
            engine.infer(inputs, schedule, overlap)
    measured: list[list[InferenceResult]] = [[] for _ in schedules]
    for k in range(warmup + repeats):
        for column, schedule, overlap in zip(measured, schedules, modes, strict=True):
            engine.evict()
            result = engine.infer(inputs, schedule, overlap)
            if k >= warmup:
                column.append(result)
                if warm is not None:
                    warm.append(engine.infer(inputs, schedule, overlap).latency_ms)
    engine.evict()
    return measured


def _to_engine_speed(exec_ms: list[float], dha_ms: list[float], scale: float) -> tuple[list[float], list[float]]:
    """Per-layer times scaled so the forward takes as long as the engine's warm request.

    The spans add up to the forward as PyTorch runs it hook by hook; the engine's request replays a captured
    graph (or runs eager) and returns the output, which on an H200 took from 0.8x to 1.5x as long. The cold
    start runs the engine's forward, so its layers are charged at that speed. A DHA span keeps its penalty
    (PCIe reads) on top of the scaled execution, and never goes below zero when the scale shrinks it (a CPU's
    noisy spans can make a penalty negative and larger than what is left of the execution).
    """
    scaled = [t * scale for t in exec_ms]
    return scaled, [max(0.0, s + d - t) for s, t, d in zip(scaled, exec_ms, dha_ms, strict=True)]


def _fit_pt(
    profile: ModelProfile,
    prepared: PreparedModel,
    devices: Sequence[torch.device],
    inputs: dict[str, torch.Tensor],
    graphs: bool,
    warmup: int,
    repeats: int,
) -> LinkProfile:
    """`fit_peer_issue` on cold starts of the even byte split over all of `devices` (the devices left empty)."""
    from deepplan_backend.runtime.schedules import even_split

    schedule = even_split([layer.nbytes for layer in profile.layers], len(devices))
    engine = ColdStartEngine(prepared.model, prepared.store, list(devices), graphs=graphs)
    try:
        measured = cold_starts(engine, inputs, [schedule], warmup, repeats)[0]
    finally:
        engine.close()
    return fit_peer_issue(profile, schedule, measured)


def profile_model(
    prepared: PreparedModel,
    devices: Sequence[torch.device],
    batch_size: int = 1,
    seq_len: int | None = None,
    warmup: int = 3,
    repeats: int = 10,
    progress: bool = True,
    graphs: bool = False,
) -> ModelProfile:
    """Profile `prepared` on `devices[0]` (links over all of `devices`), leaving the device empty afterwards.

    `graphs=True` profiles the CUDA-graph regime (see the module doc); it needs a GPU target.
    """
    target = devices[0]
    if graphs and target.type != "cuda":
        raise PlanError(
            f"{prepared.model.name}: a plan for CUDA-graph execution needs a GPU to profile on (target is {target})"
        )
    clock = _Clock(target, gpu_bound=graphs)
    inputs = prepared.model.example_inputs(batch_size, seq_len)
    n = len(prepared.table)
    engine = ColdStartEngine(prepared.model, prepared.store, [target], graphs=graphs)
    regime = "graphs" if graphs else "eager"
    steps = tqdm(total=6, desc=f"profile {prepared.model.name} ({regime})", disable=not progress, unit="step")
    try:
        resident = LoadSchedule.all_on_target(n)
        engine.infer(inputs, resident)  # provision: every layer resident
        steps.update()
        exec_ms = _median_runs(lambda: _segment_times(engine, inputs, clock), warmup, repeats)
        warm_ms = _median_runs(lambda: _forward_ms(engine, inputs, clock), warmup, repeats)[0]
        exec_ms = _calibrated(exec_ms, warm_ms)
        steps.update()
        engine.evict()
        engine.infer(inputs, LoadSchedule((DHA,) * n))  # every layer read in place from host memory
        dha_ms = _median_runs(lambda: _segment_times(engine, inputs, clock), warmup, repeats)
        dha_ms = _calibrated(dha_ms, _median_runs(lambda: _forward_ms(engine, inputs, clock), warmup, repeats)[0])
        engine.evict()
        steps.update()
        load_ms = _median_runs(lambda: _layer_load_times(prepared, target, clock), warmup, repeats)
        steps.update()
        dha_ms = fold_shared_penalties(prepared.table, exec_ms, dha_ms)
        links = measure_links(devices)
        warm: list[float] = []
        pipelined, demand = cold_starts(
            engine, inputs, [resident, resident], warmup, repeats, overlaps=[True, False], warm=warm
        )
        if warm_ms > 0:
            exec_ms, dha_ms = _to_engine_speed(exec_ms, dha_ms, statistics.median(warm) / warm_ms)
        layers = tuple(
            LayerProfile(i, layer.name, layer.nbytes, load_ms[i], exec_ms[i], dha_ms[i])
            for i, layer in enumerate(prepared.table)
        )
        key = prepared.plan_key(batch_size, seq_len, gpu_name(target), graphs=graphs)
        profile = ModelProfile(
            key=key, fingerprint=prepared.fingerprint, layers=layers, links=links, warm_ms=sum(exec_ms)
        )
        profile = dataclasses.replace(profile, links=fit_host_terms(profile, pipelined, demand))
        steps.update()
        if len(devices) > 1:
            profile = dataclasses.replace(
                profile, links=_fit_pt(profile, prepared, devices, inputs, graphs, warmup, repeats)
            )
        steps.update()
    finally:
        engine.close()  # also frees the address ranges reserved for the profile (its graphs are retired)
        steps.close()
    return profile
