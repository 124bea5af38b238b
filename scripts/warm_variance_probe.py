"""Two questions the session-6 Fig. 10 runs left open, answered on a GPU in about a minute.

    python3 scripts/warm_variance_probe.py -m resnet101 -m gpt2-medium [--engines 4 --rounds 6]

1. Does the warm latency depend on the engine *instance*? The Fig. 10 tables showed engines of one model with the
   same schedule answering warm requests up to 10-35 % apart, and the profiler's own engine faster than all of
   them (ResNet-101: 2.5 ms against 3.1-3.5 ms). The script builds `--engines` engines of one model, all on GPU 0
   with the plain pipeline schedule and CUDA graphs, samples cold + warm requests from them in turn, and prints
   each engine's medians, then the same for eager PyTorch.
2. What do the driver calls of an arena cost? It times `CudaArena.map` and `unmap` (cuMemCreate + cuMemMap +
   cuMemSetAccess; cuMemUnmap + cuMemRelease) for each model's size, and the calls one by one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deepplan_backend.runtime.arena import CudaArena, _check, _driver
from deepplan_backend.runtime.engine import ColdStartEngine
from deepplan_backend.runtime.plan import LoadSchedule
from deepplan_backend.runtime.prepared import prepare


def engine_spread(name: str, engines: int, rounds: int, graphs: bool) -> None:
    """Cold and warm medians per engine instance of one model (same schedule, same device)."""
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
    finally:
        for engine in pool:
            engine.close()
    regime = "graphs" if graphs else "eager"
    for i in range(engines):
        print(
            f"{name:12s} {regime:6s} engine {i}: cold {statistics.median(cold[i]):7.3f} ms  "
            f"warm {statistics.median(warm[i]):7.3f} ms (min {min(warm[i]):7.3f})",
            flush=True,
        )


def arena_costs(name: str, repeats: int = 10) -> None:
    """Median ms of an arena's map and unmap, and of each driver call, for the model's byte size."""
    nbytes = prepare(name).table.total_bytes
    device = torch.device("cuda:0")
    arena = CudaArena(nbytes, device)
    maps, unmaps = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        arena.map()
        t1 = time.perf_counter()
        arena.unmap()
        t2 = time.perf_counter()
        maps.append((t1 - t0) * 1e3)
        unmaps.append((t2 - t1) * 1e3)
    cu = _driver()
    steps: dict[str, list[float]] = {"create": [], "map": [], "set_access": [], "unmap": [], "release": []}
    size, ptr, prop = arena._size, arena._ptr, arena._prop
    desc = cu.CUmemAccessDesc()
    desc.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    desc.location.id = arena.index
    desc.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    with torch.cuda.device(arena.index):
        for _ in range(repeats):
            marks = [time.perf_counter()]
            handle = _check(cu.cuMemCreate(size, prop, 0), "cuMemCreate")
            marks.append(time.perf_counter())
            _check(cu.cuMemMap(ptr, size, 0, handle, 0), "cuMemMap")
            marks.append(time.perf_counter())
            _check(cu.cuMemSetAccess(ptr, size, [desc], 1), "cuMemSetAccess")
            marks.append(time.perf_counter())
            _check(cu.cuMemUnmap(ptr, size), "cuMemUnmap")
            marks.append(time.perf_counter())
            _check(cu.cuMemRelease(handle), "cuMemRelease")
            marks.append(time.perf_counter())
            for key, a, b in zip(steps, marks, marks[1:], strict=False):
                steps[key].append((b - a) * 1e3)
    arena.close()
    calls = "  ".join(f"{k} {statistics.median(v):.3f}" for k, v in steps.items())
    print(
        f"{name:12s} arena {nbytes / 2**20:7.1f} MiB: map {statistics.median(maps):.3f} ms, "
        f"unmap {statistics.median(unmaps):.3f} ms; calls (ms): {calls}",
        flush=True,
    )


def main() -> None:
    """Command line; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-m", "--model", action="append", dest="models", help="zoo model (repeatable)")
    p.add_argument("--engines", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this probe needs a GPU")
    for name in args.models or ["resnet101", "gpt2-medium"]:
        arena_costs(name)
        engine_spread(name, args.engines, args.rounds, graphs=True)
        engine_spread(name, args.engines, args.rounds, graphs=False)


if __name__ == "__main__":
    main()
