"""Device arenas: memory for a model's copied layers whose *address survives eviction*.

An arena reserves an address range once and maps physical memory into it on provision, unmapping (returning
the memory to the driver or the OS) on eviction. Because the address never changes, every tensor view of
the arena — the module's weights — is built once and stays valid across evict/re-provision cycles: a cold
start no longer rebuilds hundreds of views on its critical path, and a captured CUDA graph could replay.

- CUDA: the driver's virtual memory management (cuMemAddressReserve / cuMemCreate / cuMemMap) through
  `cuda-bindings`; eviction unmaps and releases the physical allocation, so `cudaMemGetInfo` sees it back.
- CPU: an anonymous `mmap` whose pages are dropped with `madvise(MADV_DONTNEED)` on eviction.

Mapping is the first thing a cold start does and costs about 1 ms for a few hundred MB on an H200, during which
no copy can start. So an arena is mapped in *segments* of growing size (`segment_bounds`): a cold start maps
the first (small) one, issues the copies that land in it, maps the next, and so on; the copy engine starts
after the first segment, and mapping, at several hundred GB/s, stays ahead of copies at tens.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from typing import Any, Protocol

import torch

FIRST_SEGMENT_BYTES = 8 << 20
"""Size of an arena's first segment; each next one is twice the previous (see the module doc)."""


class ArenaError(RuntimeError):
    """The arena could not be reserved or mapped (e.g. the device is out of memory)."""


def segment_bounds(size: int, granularity: int = 1, first: int | None = None) -> list[tuple[int, int]]:
    """[start, end) byte ranges covering `size`, each a multiple of `granularity`.

    The first is `first` bytes (default `FIRST_SEGMENT_BYTES`), each next one twice the previous.
    """
    if size <= 0:
        return []
    first = FIRST_SEGMENT_BYTES if first is None else first
    step = max(granularity, (first + granularity - 1) // granularity * granularity)
    bounds, start = [], 0
    while start < size:
        end = min(size, start + step)
        bounds.append((start, end))
        start, step = end, step * 2
    return bounds


class Arena(Protocol):
    """A stable byte range that is either mapped (usable) or not (costs no memory), segment by segment."""

    nbytes: int
    tensor: torch.Tensor
    mapped: bool
    segments: list[tuple[int, int]]
    """[start, end) byte offsets of the segments, in mapping order; they cover `nbytes`."""

    def map(self) -> None:
        """Back the whole range with memory; contents are undefined afterwards."""

    def map_segment(self, index: int) -> None:
        """Back one segment with memory (`mapped` once every segment is)."""

    def unmap(self) -> None:
        """Give the memory back; the range stays reserved and `tensor` must not be touched until `map`."""

    def close(self) -> None:
        """Unmap and release the address range itself."""


class HostArena:
    """CPU arena: an anonymous mapping whose pages are discarded on unmap."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.segments = segment_bounds(nbytes)
        self._segments_mapped: set[int] = set()
        self._map = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.tensor = (
            torch.frombuffer(self._map, dtype=torch.uint8, count=nbytes)
            if nbytes
            else torch.empty(0, dtype=torch.uint8)
        )
        self.mapped = False

    def map(self) -> None:
        """Pages come back on first touch (zero-filled)."""
        for i in range(len(self.segments)):
            self.map_segment(i)
        self.mapped = True

    def map_segment(self, index: int) -> None:
        """Nothing to do but bookkeeping: pages come back on first touch."""
        self._segments_mapped.add(index)
        self.mapped = len(self._segments_mapped) == len(self.segments)

    def unmap(self) -> None:
        """Drop the pages: resident memory goes back to the OS, the address stays."""
        if self.nbytes:
            self._map.madvise(mmap.MADV_DONTNEED)
        self._segments_mapped.clear()
        self.mapped = False

    def close(self) -> None:
        """Drop this arena's view; the mapping is freed with the last view of it.

        Its pages already went back on `unmap`; an mmap with live buffer exports cannot be closed explicitly.
        """
        self.mapped = False
        self.tensor = torch.empty(0, dtype=torch.uint8)


def _driver() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError:  # cuda-python < 12.6 spelled it this way
        from cuda import cuda as driver  # type: ignore[no-redef]
    return driver


def vmm_available() -> bool:
    """Whether the CUDA driver API is importable (cuda-bindings / cuda-python)."""
    try:
        _driver()
    except ImportError:
        return False
    return True


def _check(result: Any, what: str) -> Any:
    cu = _driver()
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != cu.CUresult.CUDA_SUCCESS:
        name = cu.cuGetErrorName(err)[1]
        raise ArenaError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return rest[0] if len(rest) == 1 else rest


class _DevicePointer:
    """`__cuda_array_interface__` over a raw device range, so PyTorch can alias it without owning it."""

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (ptr, False),
            "version": 3,
            "strides": None,
        }


class CudaArena:
    """Arena on a GPU through CUDA virtual memory management; peers get access for NVLink writes."""

    def __init__(self, nbytes: int, device: torch.device, peers: Sequence[torch.device] = ()) -> None:
        cu = _driver()
        torch.cuda.init()
        self.device = device
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        self._access = [self.index] + [p.index for p in peers if p.index is not None and p.index != self.index]
        prop = cu.CUmemAllocationProp()
        prop.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = self.index
        self._prop = prop
        granularity = _check(
            cu.cuMemGetAllocationGranularity(
                prop, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM
            ),
            "cuMemGetAllocationGranularity",
        )
        self.nbytes = nbytes
        self._size = max(granularity, (nbytes + granularity - 1) // granularity * granularity)
        self.segments = segment_bounds(self._size, granularity)
        with torch.cuda.device(self.index):
            self._ptr = _check(cu.cuMemAddressReserve(self._size, 0, 0, 0), "cuMemAddressReserve")
        self._handles: dict[int, Any] = {}  # segment index -> physical allocation mapped there
        self.mapped = False
        self.tensor = torch.empty(0, dtype=torch.uint8, device=device)

    @property
    def address(self) -> int:
        """Start of the reserved range."""
        return int(self._ptr)

    def map(self) -> None:
        """Create physical memory on the device and map it at the reserved address (every segment)."""
        for i in range(len(self.segments)):
            self.map_segment(i)

    def map_segment(self, index: int) -> None:
        """Create one segment's physical memory and map it in place, readable and writable by the target."""
        if index in self._handles:
            return
        cu = _driver()
        start, end = self.segments[index]
        at, size = cu.CUdeviceptr(self.address + start), end - start  # CUdeviceptr has no arithmetic
        with torch.cuda.device(self.index):
            handle = _check(cu.cuMemCreate(size, self._prop, 0), f"cuMemCreate({size} bytes)")
            try:
                _check(cu.cuMemMap(at, size, 0, handle, 0), "cuMemMap")
                descs = []
                for dev in self._access:
                    desc = cu.CUmemAccessDesc()
                    desc.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
                    desc.location.id = dev
                    desc.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
                    descs.append(desc)
                _check(cu.cuMemSetAccess(at, size, descs, len(descs)), "cuMemSetAccess")
            except ArenaError:
                cu.cuMemUnmap(at, size)
                cu.cuMemRelease(handle)
                raise
        self._handles[index] = handle
        self.mapped = len(self._handles) == len(self.segments)
        if self.mapped and self.tensor.numel() != self.nbytes:
            # Built once, while mapped (PyTorch inspects the pointer); valid for every later mapping.
            self.tensor = torch.as_tensor(_DevicePointer(self.address, self.nbytes), device=self.device)

    def unmap(self) -> None:
        """Unmap and release the physical memory: the driver has it back, the address stays reserved."""
        if not self._handles:
            return
        cu = _driver()
        torch.cuda.synchronize(self.device)  # no kernel or copy may still touch the range
        with torch.cuda.device(self.index):
            for index, handle in sorted(self._handles.items()):
                start, end = self.segments[index]
                _check(cu.cuMemUnmap(cu.CUdeviceptr(self.address + start), end - start), "cuMemUnmap")
                _check(cu.cuMemRelease(handle), "cuMemRelease")
        self._handles.clear()
        self.mapped = False

    def close(self) -> None:
        """Unmap and free the address range."""
        self.unmap()
        self.tensor = torch.empty(0, dtype=torch.uint8, device=self.device)
        with torch.cuda.device(self.index):
            _check(_driver().cuMemAddressFree(self._ptr, self._size), "cuMemAddressFree")


def make_arena(nbytes: int, device: torch.device) -> Arena:
    """An arena on `device`, private to it (PT peers' bytes are pulled by the target, see transfer.py)."""
    if device.type == "cpu":
        return HostArena(nbytes)
    if not vmm_available():
        raise ArenaError("CUDA arenas need the `cuda-bindings` (cuda-python) package: pip install cuda-python")
    return CudaArena(nbytes, device)
