"""Which layers travel together in one copy.

The rule is shared by the engine (which issues the copies) and the planner's simulator (which predicts them),
so a plan is judged by the copies the engine will really make.
"""

from __future__ import annotations

from collections.abc import Sequence

from .plan import DHA

CHUNK_BYTES = 2 << 20
"""Consecutive layers are copied together until a chunk holds this many bytes: fewer copies, events and waits
(ResNet-50 has ~100 small conv/BN layers), at the price of the first layer waiting for a little more."""


def chunk_runs(sources: Sequence[int], sizes: Sequence[int], chunk_bytes: int = CHUNK_BYTES) -> list[list[int]]:
    """Group the copied layers into chunks, each a list of layer indices.

    A chunk is a run of consecutive layers with the same source slot, closed as soon as it holds `chunk_bytes`
    (so a chunk is at least that big unless a DHA layer, a slot change or the end of the model cuts it). DHA
    layers belong to no chunk. `sizes` are the layers' bytes, laid out back to back in layer order (as the host
    store packs them), so a run is one contiguous range.
    """
    if len(sources) != len(sizes):
        raise ValueError(f"{len(sources)} sources for {len(sizes)} layer sizes")
    runs: list[list[int]] = []
    current: list[int] = []
    held = 0
    for i, src in enumerate(sources):
        if current and src != sources[current[-1]]:  # a DHA layer or another slot ends the run
            runs.append(current)
            current, held = [], 0
        if src == DHA:
            continue
        current.append(i)
        held += sizes[i]
        if held >= chunk_bytes:
            runs.append(current)
            current, held = [], 0
    if current:
        runs.append(current)
    return runs
