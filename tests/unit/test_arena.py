"""CPU arenas (`runtime/arena.py`): a stable address whose contents are dropped on unmap."""

from __future__ import annotations

import pytest
import torch

from deepplan_backend.runtime import cuda_driver
from deepplan_backend.runtime.arena import ArenaError, HostArena, make_arena

SIZE = 3 * 4096 + 100  # several pages, not a page multiple


def test_map_unmap_keeps_the_address() -> None:
    arena = HostArena(SIZE)
    assert arena.tensor.dtype == torch.uint8 and arena.tensor.numel() == SIZE == arena.nbytes
    address = arena.tensor.data_ptr()
    view = arena.tensor[4096:8192]  # views built once stay valid across cycles
    for _ in range(3):
        arena.map()
        assert arena.mapped
        assert arena.tensor.data_ptr() == address
        view.fill_(7)
        arena.unmap()
        assert not arena.mapped
        assert arena.tensor.data_ptr() == address
    assert view.data_ptr() == address + 4096


def test_unmap_drops_contents() -> None:
    arena = HostArena(SIZE)
    arena.map()
    arena.tensor.fill_(0xAB)
    assert int(arena.tensor[-1]) == 0xAB
    arena.unmap()
    arena.map()
    assert int(arena.tensor.count_nonzero()) == 0  # zero-filled pages after remapping


def test_fresh_arena_reads_zero() -> None:
    arena = HostArena(SIZE)
    arena.map()
    assert int(arena.tensor.count_nonzero()) == 0


def test_arenas_are_independent() -> None:
    a, b = HostArena(SIZE), HostArena(SIZE)
    a.map()
    b.map()
    a.tensor.fill_(1)
    assert int(b.tensor.count_nonzero()) == 0
    assert a.tensor.data_ptr() != b.tensor.data_ptr()


def test_empty_arena() -> None:
    arena = HostArena(0)
    arena.map()
    assert arena.tensor.numel() == 0
    arena.unmap()
    arena.close()
    assert not arena.mapped


def test_close() -> None:
    arena = HostArena(SIZE)
    arena.map()
    arena.close()
    assert not arena.mapped
    assert arena.tensor.numel() == 0


def test_make_arena_on_cpu() -> None:
    arena = make_arena(SIZE, torch.device("cpu"))
    assert isinstance(arena, HostArena)
    assert arena.nbytes == SIZE and arena.tensor.numel() == SIZE
    assert not arena.mapped


@pytest.mark.skipif(cuda_driver.available(), reason="cuda-bindings installed: the CUDA path is covered by tests/gpu")
def test_make_arena_on_cuda_without_driver_bindings_says_what_to_install() -> None:
    with pytest.raises(ArenaError, match="cuda-python"):
        make_arena(SIZE, torch.device("cuda", 0))
