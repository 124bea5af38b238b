"""The CUDA events a cold start records per copied chunk, kept for the life of the process and reused.

A captured graph waits on these events (`graphs.py`), so they must be created with ``external=True`` and exist
before capture. They are never destroyed: on 4 x H200 (session 7, ``scripts/warm_variance_probe.py``), graphs of
engines created after earlier engines had been closed (their events destroyed) replayed up to 17 % slower with
identical kernel times (GPT-2-Medium warm 28.7 against 24.3 ms, cold 40 against 32.4 ms); keeping the earlier
engines alive removed the difference, and so did capturing without wait nodes. In a server this hit every model
loaded after the planner's profiling engines had closed, or after another model was unloaded. An engine takes its
events at layout time and gives them back when it closes; a later engine reuses them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

_free: dict[int, list[torch.cuda.Event]] = {}
_lock = threading.Lock()


def take(count: int, stream: torch.cuda.Stream) -> list[torch.cuda.Event]:
    """`count` external events of `stream`'s device, each already recorded once (on `stream`).

    PyTorch creates an event lazily at its first record, and waiting on one never created is silently skipped,
    also while capturing: a graph captured before the first pipelined cold start (e.g. after On-Demand) would
    hold no wait nodes at all and read weights too early. Recording each event here rules that out.
    """
    index = stream.device.index
    if index is None:
        raise ValueError(f"chunk events need a CUDA stream of a given GPU, not {stream.device}")
    with _lock:
        free = _free.setdefault(index, [])
        reused = [free.pop() for _ in range(min(count, len(free)))]
    events = reused + [torch.cuda.Event(external=True) for _ in range(count - len(reused))]
    for event in events:
        event.record(stream)
    return events


def give_back(index: int, events: Sequence[torch.cuda.Event]) -> None:
    """Return events of GPU `index` that no graph or copy will use again (their engine closed, synchronized)."""
    with _lock:
        _free.setdefault(index, []).extend(events)


def pooled(index: int) -> int:
    """How many events wait for reuse on GPU `index` (for tests and diagnostics)."""
    with _lock:
        return len(_free.get(index, []))
