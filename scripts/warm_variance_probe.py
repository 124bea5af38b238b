"""Two questions the session-6 Fig. 10 runs left open, answered on a GPU in about a minute.

    python3 scripts/warm_variance_probe.py -m resnet101 -m gpt2-medium [--engines 4 --rounds 6]

1. Does the warm latency depend on the engine *instance*? The Fig. 10 tables showed engines of one model with the
   same schedule answering warm requests up to 10-35 % apart, and the profiler's own engine faster than all of
   them (ResNet-101: 2.5 ms against 3.1-3.5 ms). The script builds `--engines` engines of one model, all on GPU 0
   with the plain pipeline schedule and CUDA graphs, samples cold + warm requests from them in turn, and prints
   each engine's medians (and arena addresses), then the same for eager PyTorch. Options rule causes out:
   `--private-pools` gives every capture its own graph memory pool instead of the process's shared one
   (`runtime/graphs.py`); `--extra-events N` keeps N more CUDA events alive; `--extra-streams N` takes N streams
   from PyTorch's stream pool before the engines take theirs.
2. What do the driver calls of an arena cost? It times `CudaArena.map` and `unmap` (cuMemCreate + cuMemMap +
   cuMemSetAccess; cuMemUnmap + cuMemRelease) for each model's size, and the calls one by one.

What it found on 4 x H200 (session 6, `results/logs/s6/call*_probe.log`): the third and fourth GPT-2-Medium engines
replay 17 % slower (warm 28.6-29.7 against 24.4-25.0 ms; cold 40-41 against 32.5-34 ms) when ResNet-101 and
BERT-Base engines ran earlier in the same process; with GPT-2-Medium first, all four are alike. Eager engines are
alike in both cases. Private graph pools, 1 GiB-aligned arenas (a build with a reserve alignment, since removed),
4000 extra events and 16 extra pool streams each left the pattern unchanged; the cause is not found. Arena costs:
map 0.43 / 1.04 / 0.57 ms for ResNet-101 / BERT-Base / GPT-2-Medium, almost all cuMemSetAccess; unmap 0.23-0.50 ms,
mostly cuMemRelease. `--vmm-sizes` (call 11): cuMemSetAccess costs ~2.4 us per MiB up to 418 MiB (0.99 ms), and
0.4-0.8 ms from 512 MiB up, where cuMemCreate grows to 0.2-0.3 ms instead; rounding an arena up to 512 MiB would
not make it cheaper, and the reserve alignment changes nothing.

Session 7 (`results/logs/s7/`) found the engine-instance effect's mechanism with `--kernels` (per-kernel CUPTI times
and each request's GPU timeline): slow engines run the same kernels in the same time, but spend ~50 us idle at each
of the graph's event-wait nodes (GPT-2-Medium: 98 gaps, 4.6-5.2 ms per warm request; fast engines 0.3-0.7 ms).
`--no-waits` (call 2), `--keep-engines` (call 3) and `--keep-graphs` (call 5) each made all engines alike; reusing
the destroyed engines' CUDA events did not (call 4, a pool since reverted). So destroying graphs that hold wait
nodes slows the wait nodes of some graphs captured afterwards. The engine now replays warm requests without waits
and retires closed engines' graphs (`runtime/graphs.py`), which is what `--keep-graphs` did (an option since
removed: the engine does it now).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deepplan_backend.runtime.arena import CudaArena
from deepplan_backend.runtime.cuda_driver import check, driver
from deepplan_backend.runtime.engine import ColdStartEngine
from deepplan_backend.runtime.graphs import capture_forward
from deepplan_backend.runtime.plan import LoadSchedule
from deepplan_backend.runtime.prepared import prepare

KEEP_ENGINES = False
"""``--keep-engines``: earlier models' engines (and their CUDA events and graphs) stay alive, evicted."""
_kept: list[ColdStartEngine] = []


def engine_spread(name: str, engines: int, rounds: int, graphs: bool, kernels: bool = False) -> None:
    """Cold and warm medians per engine instance of one model (same schedule, same device), with arena addresses."""
    prepared = prepare(name)
    inputs = prepared.model.example_inputs(1, None)
    schedule = LoadSchedule.all_on_target(len(prepared.table))
    device = torch.device("cuda:0")
    pool = [ColdStartEngine(prepared.model, prepared.store, [device], graphs=graphs) for _ in range(engines)]
    cold: list[list[float]] = [[] for _ in pool]
    warm: list[list[float]] = [[] for _ in pool]
    try:
        for k in range(rounds + 2):
            for i, engine in enumerate(pool):
                engine.evict()
                first = engine.infer(inputs, schedule)
                seconds = [engine.infer(inputs, schedule).latency_ms for _ in range(3)]
                engine.evict()
                if k >= 2:
                    cold[i].append(first.latency_ms)
                    warm[i].extend(seconds)
        addresses = " ".join(hex(getattr(e._layouts[schedule].arena, "address", 0)) for e in pool)
        print(f"{name:12s} arenas at {addresses}", flush=True)
        if kernels and graphs:
            profiles = [kernel_times(e, inputs, schedule) for e in pool]
            compare_kernels(name, profiles)
    finally:
        for engine in pool:
            if KEEP_ENGINES:
                engine.evict()
                _kept.append(engine)
            else:
                engine.close()
    regime = "graphs" if graphs else "eager"
    for i in range(engines):
        print(
            f"{name:12s} {regime:6s} engine {i}: cold {statistics.median(cold[i]):7.3f} ms  "
            f"warm {statistics.median(warm[i]):7.3f} ms (min {min(warm[i]):7.3f})",
            flush=True,
        )


def kernel_times(engine: ColdStartEngine, inputs: dict, schedule: LoadSchedule) -> dict[str, tuple[int, float]]:
    """Per kernel name: (launches, total GPU us) over 3 warm requests of a provisioned engine, from CUPTI.

    Also prints, per request, where the wall time went: the span from the first to the last GPU activity, the
    kernels' busy time in it, and its largest idle gaps with the activities on either side.
    """
    from torch.profiler import ProfilerActivity, profile

    engine.evict()
    engine.infer(inputs, schedule)
    engine.infer(inputs, schedule)
    torch.cuda.synchronize()
    found: dict[str, tuple[int, float]] = {}
    for k in range(4):
        if k == 3:  # the last one cold: the graph with its waits for the copies
            engine.evict()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            wall = engine.infer(inputs, schedule).latency_ms
            torch.cuda.synchronize()
        spans = []
        for event in prof.events():
            if getattr(event, "device_type", None) != torch.autograd.DeviceType.CUDA:
                continue
            spans.append((event.time_range.start, event.time_range.end, event.name))
            if k == 3:
                continue
            count, total = found.get(event.name, (0, 0.0))
            found[event.name] = (count + 1, total + event.time_range.elapsed_us())
        print(f"    {'cold' if k == 3 else 'warm'} " + _timeline_text(wall, spans), flush=True)
    engine.evict()
    return found


def _timeline_text(wall_ms: float, spans: list[tuple[float, float, str]]) -> str:
    """One request's GPU activity: span, busy time, idle gaps (us) and the three largest with their neighbours."""
    if not spans:
        return f"wall {wall_ms:.3f} ms, no GPU activity recorded"
    spans.sort()
    busy = sum(e - b for b, e, _ in spans)
    gaps = []
    reach, before = spans[0][1], spans[0][2]
    for b, e, name in spans[1:]:
        if b - reach > 5:
            gaps.append((b - reach, before[:40], name[:40]))
        if e > reach:
            reach, before = e, name
    gaps.sort(reverse=True)
    span = (spans[-1][1] - spans[0][0]) / 1e3
    top = "; ".join(f"{g:.0f} us after {a} before {n}" for g, a, n in gaps[:3])
    return (
        f"wall {wall_ms:.3f} ms, GPU span {span:.3f} ms, busy {busy / 1e3:.3f} ms, {len(spans)} activities, "
        f"{len(gaps)} gaps > 5 us totalling {sum(g for g, _, _ in gaps) / 1e3:.3f} ms; largest: {top}"
    )


def _clocks() -> str:
    import subprocess

    query = "clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active"
    try:
        out = subprocess.run(
            ["nvidia-smi", "-i", "0", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed: {exc}"


def compare_kernels(name: str, profiles: list[dict[str, tuple[int, float]]]) -> None:
    """Each engine's kernel total, then the kernels whose time per launch differs most between engines."""
    for i, found in enumerate(profiles):
        total = sum(t for _, t in found.values()) / 3e3
        launches = sum(c for c, _ in found.values()) // 3
        print(f"{name:12s} engine {i}: {launches} kernels per request, {total:.3f} ms GPU time per request", flush=True)
    print(f"{name:12s} clocks now: {_clocks()}", flush=True)
    names = set().union(*profiles)
    rows = []
    for kernel in names:
        per = [f[kernel][1] / f[kernel][0] if kernel in f and f[kernel][0] else float("nan") for f in profiles]
        counts = [f.get(kernel, (0, 0.0))[0] // 3 for f in profiles]
        share = max(f.get(kernel, (0, 0.0))[1] for f in profiles) / 3e3
        finite = [x for x in per if x == x]
        spread = max(finite) / min(finite) if finite and min(finite) > 0 else float("inf")
        rows.append((share, spread, kernel, per, counts))
    rows.sort(reverse=True)
    for share, spread, kernel, per, counts in rows[:15]:
        cells = " ".join(f"{x:8.1f}" for x in per)
        print(f"  {share:7.3f} ms  x{spread:5.2f}  us/launch [{cells}] n={counts} {kernel[:90]}", flush=True)


def _driver_calls_ms(ptr: object, size: int, prop: object, device_index: int, repeats: int) -> dict[str, float]:
    """Median ms of each VMM driver call of one map/unmap cycle at the reserved range `ptr` of `size` bytes."""
    cu = driver()
    desc = cu.CUmemAccessDesc()
    desc.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    desc.location.id = device_index
    desc.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    steps: dict[str, list[float]] = {"create": [], "map": [], "set_access": [], "unmap": [], "release": []}
    with torch.cuda.device(device_index):
        for _ in range(repeats):
            marks = [time.perf_counter()]
            handle = check(cu.cuMemCreate(size, prop, 0), "cuMemCreate")
            marks.append(time.perf_counter())
            check(cu.cuMemMap(ptr, size, 0, handle, 0), "cuMemMap")
            marks.append(time.perf_counter())
            check(cu.cuMemSetAccess(ptr, size, [desc], 1), "cuMemSetAccess")
            marks.append(time.perf_counter())
            check(cu.cuMemUnmap(ptr, size), "cuMemUnmap")
            marks.append(time.perf_counter())
            check(cu.cuMemRelease(handle), "cuMemRelease")
            marks.append(time.perf_counter())
            for key, a, b in zip(steps, marks, marks[1:], strict=False):
                steps[key].append((b - a) * 1e3)
    return {k: statistics.median(v) for k, v in steps.items()}


def _calls_text(calls: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in calls.items())


def arena_costs(name: str, repeats: int = 10) -> None:
    """Median ms of an arena's map and unmap, and of each driver call, for the model's byte size."""
    nbytes = prepare(name).table.total_bytes
    arena = CudaArena(nbytes, torch.device("cuda:0"))
    maps, unmaps = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        arena.map()
        t1 = time.perf_counter()
        arena.unmap()
        t2 = time.perf_counter()
        maps.append((t1 - t0) * 1e3)
        unmaps.append((t2 - t1) * 1e3)
    calls = _driver_calls_ms(arena._ptr, arena._size, arena._prop, arena.index, repeats)
    arena.close()
    print(
        f"{name:12s} arena {nbytes / 2**20:7.1f} MiB: map {statistics.median(maps):.3f} ms, "
        f"unmap {statistics.median(unmaps):.3f} ms; calls (ms): {_calls_text(calls)}",
        flush=True,
    )


def set_access_sweep(sizes_mib: list[int], alignments_mib: list[int], repeats: int = 8) -> None:
    """Median ms of each VMM driver call for each size and address alignment."""
    cu = driver()
    probe = CudaArena(2 << 20, torch.device("cuda:0"))  # for its allocation properties
    for size_mib in sizes_mib:
        size = size_mib << 20
        for align_mib in alignments_mib:
            with torch.cuda.device(probe.index):
                ptr = check(cu.cuMemAddressReserve(size, align_mib << 20, 0, 0), "cuMemAddressReserve")
            calls = _driver_calls_ms(ptr, size, probe._prop, probe.index, repeats)
            with torch.cuda.device(probe.index):
                check(cu.cuMemAddressFree(ptr, size), "cuMemAddressFree")
            print(
                f"vmm {size_mib:6d} MiB aligned {align_mib:4d} MiB at {hex(int(ptr))}: {_calls_text(calls)}", flush=True
            )
    probe.close()


def main() -> None:
    """Command line; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-m", "--model", action="append", dest="models", help="zoo model (repeatable)")
    p.add_argument("--engines", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--private-pools", action="store_true", help="a graph memory pool per capture, not per GPU")
    p.add_argument("--no-eager", action="store_true", help="skip the eager engines")
    p.add_argument("--no-arena", action="store_true", help="skip the arena driver-call timings")
    p.add_argument("--extra-events", type=int, default=0, help="CUDA events (external, recorded) alive throughout")
    p.add_argument("--extra-streams", type=int, default=0, help="streams taken from PyTorch's pool first")
    p.add_argument(
        "--no-waits", action="store_true", help="capture graphs without their event waits (cold answers are wrong)"
    )
    p.add_argument("--keep-engines", action="store_true", help="keep earlier models' engines alive (evicted)")
    p.add_argument("--kernels", action="store_true", help="per-kernel GPU times of each graph engine (CUPTI)")
    p.add_argument("--vmm-sizes", type=int, nargs="*", default=[], help="only time VMM calls for these MiB sizes")
    p.add_argument("--vmm-align", type=int, nargs="*", default=[0, 2, 512], help="reserve alignments (MiB)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this probe needs a GPU")
    if args.vmm_sizes:
        set_access_sweep(args.vmm_sizes, args.vmm_align)
        return
    streams = [torch.cuda.Stream(torch.device("cuda:0")) for _ in range(args.extra_streams)]  # advance the pool
    held = [torch.cuda.Event(external=True) for _ in range(args.extra_events)]
    for event in held:
        event.record()  # PyTorch creates the event at its first record
    torch.cuda.synchronize()
    del streams
    global KEEP_ENGINES
    KEEP_ENGINES = args.keep_engines
    if args.no_waits:
        import deepplan_backend.runtime.engine as engine_module

        def capture_without_waits(module, inputs, up_front, waits, pool):  # type: ignore[no-untyped-def]
            return capture_forward(module, inputs, [], [], pool)

        engine_module.capture_forward = capture_without_waits  # type: ignore[assignment]
    if args.private_pools:
        import deepplan_backend.runtime.engine as engine_module

        def private_pool(device: torch.device) -> object:
            # a pool is freed with its last graph; the captured graph it is handed to keeps it alive
            return torch.cuda.graph_pool_handle()

        engine_module.shared_pool = private_pool  # type: ignore[assignment]
    for name in args.models or ["resnet101", "gpt2-medium"]:
        if not args.no_arena:
            arena_costs(name)
        engine_spread(name, args.engines, args.rounds, graphs=True, kernels=args.kernels)
        if not args.no_eager:
            engine_spread(name, args.engines, args.rounds, graphs=False)


if __name__ == "__main__":
    main()
