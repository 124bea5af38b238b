"""What backing a model's arena with device memory costs a cold start, and what keeping physical memory would save.

    python3 -m benchmark.arena_mapping [--sizes-mib 100 344 1280] [--chunks-mib 0 64] [-n 10] [-o CSV]

A cold start maps physical memory into its model's reserved address range before the first copy can start, and
an eviction gives it back (`runtime/arena.CudaArena`). Each row times those driver calls for one arena size,
medians over ``-n`` cycles on GPU 0:

- ``fresh`` (what a cold start does today): ``cuMemCreate`` + ``cuMemMap`` + ``cuMemSetAccess``; the eviction
  ``cuMemUnmap`` + ``cuMemRelease``;
- ``pooled``: the physical allocation outlives the eviction (kept by the process for the next cold start), so the
  cold start only maps it and sets its access, and the eviction only unmaps.

``--chunks-mib C`` makes the physical memory out of C MiB allocations (0: one allocation of the arena's size),
which a pool shared by models of different sizes would need. ``copy_ms`` is the host-to-device copy of the whole
arena from pinned memory right after the mapping, to show whether fresh and reused memory copy alike. CSV and
JSON beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .table import write_records

COLUMNS = (
    "mode",
    "arena_mib",
    "chunk_mib",
    "chunks",
    "create_ms",
    "map_ms",
    "access_ms",
    "provision_ms",
    "unmap_ms",
    "release_ms",
    "evict_ms",
    "copy_ms",
    "copy_gb_s",
    "samples",
    "gpu_name",
)
MODES = ("fresh", "pooled")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - start) * 1e3


class _Range:
    """One reserved address range on GPU 0 and the driver calls of its mapping, each timed."""

    def __init__(self, nbytes: int, chunk: int) -> None:
        from deepplan_backend.runtime import cuda_driver
        from deepplan_backend.runtime.arena import access_descriptors, device_allocation

        self.cu = cu = cuda_driver.driver()
        self.check = cuda_driver.check
        self.prop, gran = device_allocation(0)  # what the arenas allocate, so that this times their calls
        self.size = -(-nbytes // gran) * gran
        piece = -(-chunk // gran) * gran if chunk else self.size
        self.pieces = [min(piece, self.size - off) for off in range(0, self.size, piece)]
        self.ptr = self.check(cu.cuMemAddressReserve(self.size, 0, 0, 0), "cuMemAddressReserve")
        self.descs = access_descriptors([0])
        self.handles: list[Any] = []

    def create(self) -> float:
        def go() -> None:
            for n in self.pieces:
                self.handles.append(self.check(self.cu.cuMemCreate(n, self.prop, 0), "cuMemCreate"))

        return _timed(go)[1]

    def map(self) -> float:
        def go() -> None:
            off = 0
            for n, h in zip(self.pieces, self.handles, strict=True):
                self.check(self.cu.cuMemMap(int(self.ptr) + off, n, 0, h, 0), "cuMemMap")
                off += n

        return _timed(go)[1]

    def access(self) -> float:
        return _timed(lambda: self.check(self.cu.cuMemSetAccess(self.ptr, self.size, self.descs, 1), "cuMemSetAccess"))[
            1
        ]

    def unmap(self) -> float:
        return _timed(lambda: self.check(self.cu.cuMemUnmap(self.ptr, self.size), "cuMemUnmap"))[1]

    def release(self) -> float:
        def go() -> None:
            for h in self.handles:
                self.check(self.cu.cuMemRelease(h), "cuMemRelease")
            self.handles.clear()

        return _timed(go)[1]

    def close(self) -> None:
        if self.handles:
            self.release()
        self.check(self.cu.cuMemAddressFree(self.ptr, self.size), "cuMemAddressFree")


def measure(mode: str, nbytes: int, chunk: int, cycles: int) -> dict[str, float]:
    """Median milliseconds of each call over `cycles` provision/evict cycles of one arena (one warm-up cycle first)."""
    import torch

    from deepplan_backend.runtime.arena import DevicePointer

    r = _Range(nbytes, chunk)
    source = torch.empty(r.size, dtype=torch.uint8).pin_memory()
    laps: dict[str, list[float]] = {k: [] for k in ("create", "map", "access", "unmap", "release", "copy")}
    try:
        if mode == "pooled":
            r.create()
        for i in range(cycles + 1):
            torch.cuda.synchronize()
            lap = {"create": r.create() if mode == "fresh" else 0.0}
            lap["map"] = r.map()
            lap["access"] = r.access()
            target = torch.as_tensor(DevicePointer(int(r.ptr), r.size), device="cuda:0")
            start = time.perf_counter()
            target.copy_(source, non_blocking=True)
            torch.cuda.synchronize()
            lap["copy"] = (time.perf_counter() - start) * 1e3
            del target
            lap["unmap"] = r.unmap()
            lap["release"] = r.release() if mode == "fresh" else 0.0
            if i:  # the first cycle pays one-time costs (the driver's first mapping of this size)
                for k, v in lap.items():
                    laps[k].append(v)
    finally:
        r.close()
    return {k: statistics.median(v) for k, v in laps.items()}


def main(argv: list[str] | None = None) -> int:
    """Every size, chunking and mode; see the module docstring."""
    p = argparse.ArgumentParser(prog="python3 -m benchmark.arena_mapping", description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mib", type=float, nargs="+", default=[100, 344, 1280], help="arena sizes (MiB)")
    p.add_argument("--chunks-mib", type=float, nargs="+", default=[0, 64], help="allocation sizes (0: one per arena)")
    p.add_argument("-n", "--cycles", type=int, default=10, help="provision/evict cycles per row (median)")
    p.add_argument("-o", "--output", type=Path, default=Path("results/arena_mapping.csv"))
    args = p.parse_args(argv)
    if args.cycles < 1:
        p.error("--cycles must be at least 1")
    import torch

    from deepplan_backend.runtime import cuda_driver

    if not torch.cuda.is_available() or not cuda_driver.available():
        p.error("needs a CUDA GPU and cuda-bindings (the arenas it measures are CUDA's)")
    torch.cuda.init()
    gpu = torch.cuda.get_device_name(0)
    records: list[dict[str, object]] = []
    for mib in args.sizes_mib:
        for chunk_mib in args.chunks_mib:
            for mode in MODES:
                nbytes, chunk = int(mib * 2**20), int(chunk_mib * 2**20)
                ms = measure(mode, nbytes, chunk, args.cycles)
                provision = ms["create"] + ms["map"] + ms["access"]
                evict = ms["unmap"] + ms["release"]
                records.append({
                    "mode": mode, "arena_mib": mib, "chunk_mib": chunk_mib,
                    "chunks": -(-nbytes // chunk) if chunk else 1,
                    **{f"{k}_ms": v for k, v in ms.items()},
                    "provision_ms": provision, "evict_ms": evict,
                    "copy_gb_s": nbytes / ms["copy"] / 1e6, "samples": args.cycles, "gpu_name": gpu,
                })  # fmt: skip
                print(
                    f"{mib:g} MiB in {chunk_mib:g} MiB pieces, {mode}: provision {provision:.3f} ms (create "
                    f"{ms['create']:.3f}, map {ms['map']:.3f}, access {ms['access']:.3f}), evict {evict:.3f} ms, "
                    f"copy {ms['copy']:.2f} ms ({gpu})",
                    flush=True,
                )
                write_records(records, COLUMNS, args.output)
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
