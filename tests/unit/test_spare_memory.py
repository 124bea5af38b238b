"""`runtime/spare_memory`: evicted allocations kept for the cold start that evicted them, and released otherwise.

The handles here are plain objects and `release` records its calls: the module's contract with its arena (a CUDA
one on the device, see tests/gpu/test_spare_memory_gpu.py) is only that it calls `release` exactly once for every
allocation no arena took.
"""

from __future__ import annotations

import threading

import pytest

from deepplan_backend.runtime import spare_memory


class _Driver:
    """Allocations and which of them were given back."""

    def __init__(self) -> None:
        self.released: list[str] = []

    def release(self, handle: str) -> None:
        self.released.append(handle)


def test_outside_a_scope_nothing_is_kept() -> None:
    d = _Driver()
    assert not spare_memory.keep(0, 100, "a", d.release)
    assert spare_memory.take(0, 100) is None
    assert d.released == []  # keep() said no: the caller releases, not the module


def test_an_evicted_allocation_of_the_same_size_and_device_is_taken_not_released() -> None:
    d = _Driver()
    before = spare_memory.taken_total()
    with spare_memory.reusing():
        assert spare_memory.keep(0, 100, "victim", d.release)
        assert spare_memory.take(0, 100) == "victim"
        assert spare_memory.take(0, 100) is None  # taken once only
    assert d.released == []
    assert spare_memory.taken_total() == before + 1


def test_another_size_releases_that_devices_kept_memory_before_allocating() -> None:
    d = _Driver()
    with spare_memory.reusing():
        spare_memory.keep(0, 100, "gpu0-small", d.release)
        spare_memory.keep(1, 300, "gpu1", d.release)
        assert spare_memory.take(0, 300) is None
        assert d.released == ["gpu0-small"]  # the new allocation may need exactly that memory
        assert spare_memory.take(1, 300) == "gpu1"  # other devices' kept memory is untouched
    assert d.released == ["gpu0-small"]


def test_one_allocation_per_device_is_taken_and_the_rest_released_at_once() -> None:
    """Two victims of one size: the cold start maps one arena, so the second goes back before it runs."""
    d = _Driver()
    with spare_memory.reusing():
        spare_memory.keep(0, 100, "a", d.release)
        spare_memory.keep(0, 100, "b", d.release)
        assert spare_memory.take(0, 100) == "a"
        assert d.released == ["b"]
    assert d.released == ["b"]


def test_what_no_arena_took_is_released_when_the_scope_ends() -> None:
    d = _Driver()
    with spare_memory.reusing():
        spare_memory.keep(0, 100, "a", d.release)
        spare_memory.keep(1, 100, "b", d.release)
        assert spare_memory.take(1, 100) == "b"
        assert d.released == []
    assert d.released == ["a"]
    assert not spare_memory.keep(0, 100, "c", d.release)  # the scope is closed


def test_released_also_when_the_scope_fails() -> None:
    d = _Driver()
    with pytest.raises(RuntimeError, match="cold start failed"), spare_memory.reusing():
        spare_memory.keep(0, 100, "a", d.release)
        raise RuntimeError("cold start failed")
    assert d.released == ["a"]


def test_a_nested_scope_leaves_the_release_to_the_outer_one() -> None:
    d = _Driver()
    with spare_memory.reusing():
        with spare_memory.reusing():
            spare_memory.keep(0, 100, "a", d.release)
        assert d.released == []
        assert spare_memory.take(0, 100) == "a"
    assert d.released == []


def test_other_threads_release_at_once() -> None:
    """An eviction asked by another process runs on the residency listener's thread: its memory must go back."""
    d = _Driver()
    kept: list[bool] = []
    with spare_memory.reusing():
        t = threading.Thread(target=lambda: kept.append(spare_memory.keep(0, 100, "x", d.release)))
        t.start()
        t.join()
        assert kept == [False]
        assert spare_memory.take(0, 100) is None


def test_switched_off_every_eviction_releases(monkeypatch) -> None:
    monkeypatch.setenv(spare_memory.REUSE_ENV, "0")
    d = _Driver()
    with spare_memory.reusing():
        assert not spare_memory.keep(0, 100, "a", d.release)


def test_a_failed_release_does_not_skip_the_others() -> None:
    d = _Driver()

    def broken(handle: str) -> None:
        raise OSError(f"cannot release {handle}")

    with pytest.raises(OSError, match="cannot release a"), spare_memory.reusing():
        spare_memory.keep(0, 100, "a", broken)
        spare_memory.keep(0, 100, "b", d.release)
    assert d.released == ["b"]


def test_a_failed_release_of_the_rest_does_not_leave_the_match_allocated() -> None:
    d = _Driver()

    def broken(handle: str) -> None:
        raise OSError(f"cannot release {handle}")

    with spare_memory.reusing():
        spare_memory.keep(0, 200, "other", broken)
        spare_memory.keep(0, 100, "match", d.release)
        with pytest.raises(OSError, match="cannot release other"):
            spare_memory.take(0, 100)
        assert d.released == ["match"]
