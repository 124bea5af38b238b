"""Device memory handed from an evicted model to the cold start that evicted it, without the driver in between.

Making room for a cold start evicts models, and each eviction gave its physical memory back to the driver
(``cuMemRelease``) only for the cold start to ask the driver for as much again (``cuMemCreate``). For BERT-Base's
344 MiB on an H100 the release took 0.33 ms of the eviction's 0.41 ms, and unmapping alone 0.08 ms
(``benchmark.arena_mapping``, session 15); on a full server nearly every cold start evicts, on its critical path.

Inside `reusing()`, an arena unmapped on this thread keeps its physical allocation here (`keep`) instead of
releasing it, and an arena of the same size and device mapped on this thread takes it (`take`). The rest goes
back to the driver as soon as an arena of that device is mapped, or when the scope ends: memory the residency
budget no longer counts is held only between the evictions and the cold start's mapping, within one device job.
Evictions on other threads, such as one asked by another process over the residency listener, release at once:
that process allocates its own memory.

``DEEPPLAN_REUSE_EVICTED_MEMORY=0`` turns the reuse off (every eviction releases), for comparison.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

REUSE_ENV = "DEEPPLAN_REUSE_EVICTED_MEMORY"


class _Kept(NamedTuple):
    device: int
    size: int
    handle: Any
    release: Callable[[Any], None]


_local = threading.local()  # .kept: this thread's list of _Kept while a scope is open, else absent or None
_taken_total = 0  # allocations taken from evicted models by this process, for tests and logs
_count_lock = threading.Lock()


def enabled() -> bool:
    """Whether evicted memory is reused (``DEEPPLAN_REUSE_EVICTED_MEMORY``, default on)."""
    return os.environ.get(REUSE_ENV, "1").strip() != "0"


@contextlib.contextmanager
def reusing() -> Iterator[None]:
    """Keep memory unmapped on this thread for arenas mapped on it until the scope ends (nested: the outer one)."""
    if getattr(_local, "kept", None) is not None or not enabled():
        yield
        return
    _local.kept = []
    try:
        yield
    finally:
        kept, _local.kept = _local.kept, None
        _release(kept)


def keep(device: int, size: int, handle: Any, release: Callable[[Any], None]) -> bool:
    """Keep an unmapped allocation of `size` bytes on `device` for this thread's scope; False outside one.

    `release` gives it back to the driver if no arena takes it. On False the caller releases it itself.
    """
    kept = getattr(_local, "kept", None)
    if kept is None:
        return False
    kept.append(_Kept(device, size, handle, release))
    return True


def take(device: int, size: int) -> Any | None:
    """A kept allocation of exactly `size` bytes on `device`, or None; the others kept for `device` are released.

    The caller is about to map its arena on `device`. A cold start maps one arena there, so nothing else kept for
    that device can be used: it goes back to the driver now, before the caller allocates (the memory it needs may
    be exactly what is kept) and before the cold start runs (the budget no longer counts it).
    """
    global _taken_total
    kept = getattr(_local, "kept", None)
    if not kept:
        return None
    mine = [k for k in kept if k.device == device]
    kept[:] = [k for k in kept if k.device != device]
    match = next((k for k in mine if k.size == size), None)
    try:
        _release([k for k in mine if k is not match])
    except BaseException:
        if match is not None:  # the caller gets the failure, not the allocation: it must not stay allocated
            _release([match])
        raise
    if match is None:
        return None
    with _count_lock:
        _taken_total += 1
    return match.handle


def taken_total() -> int:
    """How many allocations arenas of this process took from evicted ones (`take`) so far."""
    with _count_lock:
        return _taken_total


def _release(kept: list[_Kept]) -> None:
    """Release every allocation; the first failure is raised after the others are released."""
    failure: BaseException | None = None
    for k in kept:
        try:
            k.release(k.handle)
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
