"""Device arenas: memory for a model's copied layers whose *address survives eviction*.

An arena reserves an address range once and maps physical memory into it on provision, unmapping (returning
the memory to the driver or the OS) on eviction. Because the address never changes, every tensor view of
the arena — the module's weights — is built once and stays valid across evict/re-provision cycles: a cold
start no longer rebuilds hundreds of views on its critical path, and a captured CUDA graph could replay.

- CUDA: the driver's virtual memory management (cuMemAddressReserve / cuMemCreate / cuMemMap) through
  `cuda-bindings`; eviction unmaps and releases the physical allocation, so `cudaMemGetInfo` sees it back, unless
  the cold start that evicts it takes it over (`spare_memory`).
- CPU: an anonymous `mmap` whose pages are dropped with `madvise(MADV_DONTNEED)` on eviction.
"""

from __future__ import annotations

import functools
import mmap
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from . import cuda_driver, spare_memory


class ArenaError(RuntimeError):
    """The arena could not be reserved or mapped (e.g. the device is out of memory)."""


class Arena(Protocol):
    """A stable byte range that is either mapped (usable) or not (costs no memory)."""

    nbytes: int
    tensor: torch.Tensor
    mapped: bool

    def map(self) -> None:
        """Back the range with memory; contents are undefined afterwards."""

    def unmap(self) -> None:
        """Give the memory back; the range stays reserved and `tensor` must not be touched until `map`."""

    def close(self) -> None:
        """Unmap and release the address range itself."""


class HostArena:
    """CPU arena: an anonymous mapping whose pages are discarded on unmap."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self._map = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.tensor = (
            torch.frombuffer(self._map, dtype=torch.uint8, count=nbytes)
            if nbytes
            else torch.empty(0, dtype=torch.uint8)
        )
        self.mapped = False

    def map(self) -> None:
        """Pages come back on first touch (zero-filled)."""
        self.mapped = True

    def unmap(self) -> None:
        """Drop the pages: resident memory goes back to the OS, the address stays."""
        if self.nbytes:
            self._map.madvise(mmap.MADV_DONTNEED)
        self.mapped = False

    def close(self) -> None:
        """Drop this arena's view; the mapping is freed with the last view of it.

        Its pages already went back on `unmap`; an mmap with live buffer exports cannot be closed explicitly.
        """
        self.mapped = False
        self.tensor = torch.empty(0, dtype=torch.uint8)


_check = functools.partial(cuda_driver.check, error=ArenaError)


def device_allocation(index: int) -> tuple[Any, int]:
    """What an arena allocates on GPU `index` (pinned device memory), and the granularity its sizes round up to."""
    cu = cuda_driver.driver()
    prop = cu.CUmemAllocationProp()
    prop.type = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    prop.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    prop.location.id = index
    granularity = _check(
        cu.cuMemGetAllocationGranularity(prop, cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM),
        "cuMemGetAllocationGranularity",
    )
    return prop, int(granularity)


def access_descriptors(indices: Sequence[int]) -> list[Any]:
    """Read-write access for each GPU of `indices`, as ``cuMemSetAccess`` takes it."""
    cu = cuda_driver.driver()
    descs = []
    for index in indices:
        desc = cu.CUmemAccessDesc()
        desc.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        desc.location.id = index
        desc.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        descs.append(desc)
    return descs


class DevicePointer:
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
        cu = cuda_driver.driver()
        torch.cuda.init()
        self.device = device
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        self._access = [self.index] + [p.index for p in peers if p.index is not None and p.index != self.index]
        self._prop, granularity = device_allocation(self.index)
        self.nbytes = nbytes
        self._size = max(granularity, (nbytes + granularity - 1) // granularity * granularity)
        with torch.cuda.device(self.index):
            self._ptr = _check(cu.cuMemAddressReserve(self._size, 0, 0, 0), "cuMemAddressReserve")
        self._handle: Any = None
        self.mapped = False
        self.tensor = torch.empty(0, dtype=torch.uint8, device=device)

    @property
    def address(self) -> int:
        """Start of the reserved range."""
        return int(self._ptr)

    def map(self) -> None:
        """Create physical memory on the device and map it at the reserved address."""
        if self.mapped:
            return
        cu = cuda_driver.driver()
        with torch.cuda.device(self.index):
            handle = spare_memory.take(self.index, self._size)
            if handle is None:
                handle = _check(cu.cuMemCreate(self._size, self._prop, 0), f"cuMemCreate({self._size} bytes)")
            try:
                _check(cu.cuMemMap(self._ptr, self._size, 0, handle, 0), "cuMemMap")
                descs = access_descriptors(self._access)
                _check(cu.cuMemSetAccess(self._ptr, self._size, descs, len(descs)), "cuMemSetAccess")
            except ArenaError:
                cu.cuMemUnmap(self._ptr, self._size)
                cu.cuMemRelease(handle)
                raise
        self._handle = handle
        self.mapped = True
        if self.tensor.numel() != self.nbytes:
            # Built once, while mapped (PyTorch inspects the pointer); valid for every later mapping.
            self.tensor = torch.as_tensor(DevicePointer(self.address, self.nbytes), device=self.device)

    def unmap(self) -> None:
        """Unmap and release the physical memory (or keep it for a cold start: `spare_memory`); the address stays."""
        if not self.mapped:
            return
        cu = cuda_driver.driver()
        torch.cuda.synchronize(self.device)  # no kernel or copy may still touch the range
        with torch.cuda.device(self.index):
            _check(cu.cuMemUnmap(self._ptr, self._size), "cuMemUnmap")
            release = functools.partial(_release, self.index)
            if not spare_memory.keep(self.index, self._size, self._handle, release):
                release(self._handle)
        self._handle = None
        self.mapped = False

    def close(self) -> None:
        """Unmap and free the address range."""
        self.unmap()
        self.tensor = torch.empty(0, dtype=torch.uint8, device=self.device)
        with torch.cuda.device(self.index):
            _check(cuda_driver.driver().cuMemAddressFree(self._ptr, self._size), "cuMemAddressFree")


def _release(index: int, handle: Any) -> None:
    with torch.cuda.device(index):  # whichever device is current where a kept allocation is let go
        _check(cuda_driver.driver().cuMemRelease(handle), "cuMemRelease")


def make_arena(nbytes: int, device: torch.device) -> Arena:
    """An arena on `device`, private to it (PT peers' bytes are pulled by the target, see transfer.py)."""
    if device.type == "cpu":
        return HostArena(nbytes)
    if not cuda_driver.available():
        raise ArenaError("CUDA arenas need the `cuda-bindings` (cuda-python) package: pip install cuda-python")
    return CudaArena(nbytes, device)
