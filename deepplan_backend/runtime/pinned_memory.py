"""Page-locked host buffers of exactly the size asked, for a model's private host copy.

PyTorch's pinned allocator (`pin_memory=True`) rounds every request up to a power of two and keeps the block in
its cache: a 417.6 MiB model took 512 MiB of page-locked memory on an H100 host (`results/logs/s15/call2/`). A
private host copy is allocated once and held for the model's life, so the rounding is pure loss, paid per model
(weights images, the default in a server, were never affected: they are registered by hand).

Here the bytes are an anonymous mapping of the exact size (rounded to a page), registered with CUDA as the images
are (portable for PT, mapped for DHA). The tensor owns the registration: the last tensor or view over the bytes
to go unregisters them, then unmaps them, so no caller has to remember a release, and unregistering can never
happen under a live view.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Register = Callable[[int, int], None]
"""Page-locks ``(address, nbytes)``; raises OSError when refused."""
Unregister = Callable[[int], None]
"""Undoes `Register` for an address."""

_PORTABLE_AND_MAPPED = 0x1 | 0x2  # cudaHostRegisterPortable | cudaHostRegisterMapped


def cuda_register(address: int, nbytes: int) -> None:
    """Page-lock host bytes for every GPU (portable: PT's peers copy from them too) and map them (DHA)."""
    err = int(torch.cuda.cudart().cudaHostRegister(address, nbytes, _PORTABLE_AND_MAPPED))
    if err != 0:
        clear_runtime_error()
        raise OSError(f"cudaHostRegister of {nbytes} bytes failed: error {err}")


def cuda_unregister(address: int) -> None:
    """Undo `cuda_register` (an error, e.g. CUDA torn down at exit, is cleared and ignored)."""
    if int(torch.cuda.cudart().cudaHostUnregister(address)) != 0:
        clear_runtime_error()


def clear_runtime_error() -> bool:
    """Take this thread's pending CUDA runtime error out of the runtime's state; whether there was one.

    PyTorch's raw `cudart()` calls return their error but leave it set as the thread's last error, and PyTorch
    reads `cudaGetLastError` after each kernel launch: the next kernel of this thread would fail with the
    registration's error (seen on an H100, session 16: a refused unregister failed a later model's forward).
    PyTorch binds no `cudaGetLastError`, and a ctypes handle on a loaded libcudart did not reach the instance
    PyTorch checks (same H100): so one tiny launch takes the error through PyTorch's own check.
    """
    try:
        torch.empty(1, device=torch.device("cuda", torch.cuda.current_device())).zero_()
    except RuntimeError:  # torch.AcceleratorError: the pending error, now taken
        return True
    return False


class _RegisteredPages:
    """An anonymous mapping, registered; numpy's array interface lets a tensor hold it, so the tensor's end frees it.

    The array interface hands numpy a raw address (no buffer export), so the mapping can be closed in `__del__`,
    which runs once the last array, and so the last tensor, over it is gone.
    """

    def __init__(self, nbytes: int, register: Register, unregister: Unregister) -> None:
        self._map = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._unregister = unregister
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self._map))  # the temporary export ends here
        self._registered = False
        register(self.address, nbytes)  # on failure the half-made object is collected and its mapping closed
        self._registered = True
        self.__array_interface__: dict[str, Any] = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (self.address, False),
            "version": 3,
        }

    def __del__(self) -> None:
        if getattr(self, "_registered", False):
            self._registered = False
            try:  # CUDA may already be torn down at interpreter exit, when the process's memory goes anyway
                self._unregister(self.address)
            except Exception:  # noqa: BLE001 - nothing to report to at that point
                pass
        if hasattr(self, "_map"):
            self._map.close()


def exact_pinned_empty(
    nbytes: int, register: Register = cuda_register, unregister: Unregister = cuda_unregister
) -> torch.Tensor:
    """An uninitialised uint8 host tensor of `nbytes`, page-locked at that size; raises OSError when refused.

    `register` / `unregister` default to CUDA's; the bytes are unregistered and unmapped when the last tensor or
    view over them is gone.
    """
    if nbytes <= 0:
        raise ValueError(f"a pinned buffer needs a positive size, not {nbytes}")
    return torch.from_numpy(np.asarray(_RegisteredPages(nbytes, register, unregister)))
