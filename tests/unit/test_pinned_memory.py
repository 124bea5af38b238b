"""Exact-size pinned buffers: registered once at their exact size, unregistered once, only after the last view."""

from __future__ import annotations

import gc
import mmap

import pytest
import torch

from deepplan_backend.runtime.pinned_memory import exact_pinned_empty


class _Registrar:
    """Records the page-locking calls a buffer makes (the CPU host has no CUDA to make them to)."""

    def __init__(self, refuse: bool = False) -> None:
        self.registered: list[tuple[int, int]] = []
        self.unregistered: list[int] = []
        self.refuse = refuse

    def register(self, address: int, nbytes: int) -> None:
        if self.refuse:
            raise OSError("cudaHostRegister refused")
        self.registered.append((address, nbytes))

    def unregister(self, address: int) -> None:
        self.unregistered.append(address)


def test_the_buffer_is_registered_once_at_its_exact_size() -> None:
    calls = _Registrar()
    nbytes = 3 * mmap.PAGESIZE + 123  # not a power of two, not a whole page
    buffer = exact_pinned_empty(nbytes, calls.register, calls.unregister)
    assert buffer.dtype == torch.uint8 and buffer.shape == (nbytes,)
    assert calls.registered == [(buffer.data_ptr(), nbytes)]
    assert buffer.data_ptr() % mmap.PAGESIZE == 0
    buffer.fill_(7)  # writable, every byte
    assert int(buffer.sum()) == 7 * nbytes


def test_unregistered_once_when_the_last_view_is_gone_not_before() -> None:
    calls = _Registrar()
    buffer = exact_pinned_empty(1 << 20, calls.register, calls.unregister)
    address = buffer.data_ptr()
    view = buffer[4096:8192].view(torch.float32)  # e.g. a layer's weights bound into a module
    del buffer
    gc.collect()
    assert calls.unregistered == []  # a module still reads its weights there
    view.fill_(1.5)
    assert float(view.sum()) == 1.5 * 1024
    del view
    gc.collect()
    assert calls.unregistered == [address]


def test_a_refused_registration_raises_and_unregisters_nothing() -> None:
    calls = _Registrar(refuse=True)
    with pytest.raises(OSError, match="refused"):
        exact_pinned_empty(1 << 16, calls.register, calls.unregister)
    gc.collect()
    assert calls.unregistered == []


@pytest.mark.parametrize("nbytes", [0, -1])
def test_a_size_that_is_not_positive_is_refused(nbytes: int) -> None:
    with pytest.raises(ValueError, match="positive size"):
        exact_pinned_empty(nbytes, _Registrar().register, _Registrar().unregister)
