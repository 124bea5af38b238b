"""PT (parallel transmission) partition: which device slot copies each loaded layer.

The loaded (non-DHA) layers, in layer order, are cut into `num_devices` contiguous runs. The target (slot 0)
takes the first run because those layers are needed first; peer s takes run s. A partition is stored as its
cut points: `cuts[s-1]` is the position, in the list of loaded layers, where run s begins, so
0 <= cuts[0] <= cuts[1] <= ... <= len(loaded). Equal cuts leave a run empty (that slot copies nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from deepplan_backend.runtime.plan import DHA, LoadSchedule, ModelProfile, PlanError
from planner.simulate import CostModel

MAX_DESCENT_ROUNDS = 8
"""Coordinate descent almost always settles in two or three rounds; this bounds the pathological case."""

EXHAUSTIVE_RANGE = 48
"""A cut with at most this many positions to choose from is searched exhaustively."""

GRID_POINTS = 16
"""Coarse grid size for a cut with a long range, before refining around the best grid point."""

IMPROVEMENT_MS = 1e-12
"""Only a change that lowers the prediction by more than float noise is taken."""


def _loaded_positions(profile: ModelProfile, dha: Collection[int]) -> list[int]:
    """Layer indices that are copied (not DHA), in layer order."""
    n = len(profile.layers)
    bad = [i for i in dha if not 0 <= i < n]
    if bad:
        raise PlanError(f"{profile.key.model}: DHA layer indices {sorted(bad)[:8]} outside 0..{n - 1}")
    dha_set = set(dha)
    return [i for i in range(n) if i not in dha_set]


def _check_devices(profile: ModelProfile, num_devices: int) -> None:
    if num_devices < 1:
        raise PlanError(f"{profile.key.model}: a partition needs at least one device, got {num_devices}")


def schedule_from_cuts(
    profile: ModelProfile, loaded: Sequence[int], cuts: Sequence[int], num_devices: int
) -> LoadSchedule:
    """Build the LoadSchedule that gives loaded layers [cuts[s-1], cuts[s]) to slot s (DHA elsewhere)."""
    if len(cuts) != num_devices - 1:
        raise PlanError(f"{profile.key.model}: {num_devices} devices need {num_devices - 1} cuts, got {len(cuts)}")
    bounds = [0, *cuts, len(loaded)]
    if any(a > b for a, b in zip(bounds, bounds[1:], strict=False)):
        raise PlanError(f"{profile.key.model}: partition cuts {list(cuts)} are not ordered within 0..{len(loaded)}")
    return LoadSchedule(sources=tuple(sources_from_cuts(len(profile.layers), loaded, cuts)), num_devices=num_devices)


def weighted_cuts(nbytes: Sequence[int], shares: Sequence[float]) -> list[int]:
    """Cut points giving run s about `shares[s]` of the bytes (shares are normalized; layers stay whole).

    A layer goes to the run whose byte range holds the layer's midpoint, which keeps runs contiguous and
    ordered and puts a layer larger than a share with the run it mostly falls into.
    """
    total_share = sum(shares)
    if len(shares) < 1 or total_share <= 0 or any(s < 0 for s in shares):
        raise PlanError(f"partition shares must be >= 0 with a positive sum, got {list(shares)}")
    total = sum(nbytes)
    edges = []  # byte offset where each run after the first begins
    acc = 0.0
    for share in shares[:-1]:
        acc += share / total_share
        edges.append(acc * total)
    cuts = []
    pos = 0
    offset = 0
    for edge in edges:
        while pos < len(nbytes) and offset + nbytes[pos] / 2 < edge:
            offset += nbytes[pos]
            pos += 1
        cuts.append(pos)
    if cuts and nbytes and cuts[0] == 0:
        # The target always takes the first layer: it is needed first, and a peer's copy of it would add the
        # NVLink hop to the very start of the pipeline.
        cuts = [max(1, c) for c in cuts]
    return cuts


def even_byte_split(profile: ModelProfile, dha: Collection[int], num_devices: int) -> LoadSchedule:
    """The original DeepPlan rule: the loaded layers' bytes divided evenly among the devices, in order."""
    return weighted_split(profile, dha, [1.0] * num_devices)


def weighted_split(profile: ModelProfile, dha: Collection[int], shares: Sequence[float]) -> LoadSchedule:
    """Split the loaded layers by byte shares, one share per device slot (slot 0 = target first)."""
    _check_devices(profile, len(shares))
    loaded = _loaded_positions(profile, dha)
    cuts = weighted_cuts([profile.layers[i].nbytes for i in loaded], shares)
    return schedule_from_cuts(profile, loaded, cuts, len(shares))


def byte_shares(profile: ModelProfile, schedule: LoadSchedule) -> list[float]:
    """Fraction of the loaded bytes each slot copies under `schedule` (all zero shares become even)."""
    shares = [0.0] * schedule.num_devices
    for layer, src in zip(profile.layers, schedule.sources, strict=True):
        if src != DHA:
            shares[src] += layer.nbytes
    total = sum(shares)
    if total <= 0:
        return [1.0] * schedule.num_devices
    return [s / total for s in shares]


def _cuts_of(schedule: LoadSchedule, loaded: Sequence[int]) -> list[int]:
    """Recover the cut points of a contiguous schedule over `loaded`."""
    cuts = []
    for slot in range(1, schedule.num_devices):
        pos = 0
        while pos < len(loaded) and schedule.sources[loaded[pos]] < slot:
            pos += 1
        cuts.append(pos)
    return cuts


def sources_from_cuts(num_layers: int, loaded: Sequence[int], cuts: Sequence[int]) -> list[int]:
    """Per-layer sources for ordered cuts (no checks: the search only makes valid cuts)."""
    sources = [DHA] * num_layers
    bounds = [0, *cuts, len(loaded)]
    for slot in range(len(bounds) - 1):
        for pos in range(bounds[slot], bounds[slot + 1]):
            sources[loaded[pos]] = slot
    return sources


def _search_cut(evaluate: Callable[[int], float], current: int, best: float, low: int, high: int) -> tuple[int, float]:
    """Best position for one cut within [low, high], starting from `current` whose total is `best`.

    Short ranges are searched exhaustively. Long ones get a coarse grid over the whole range (both ends
    included, so emptying a run is always tried), then a pattern search with halving steps around the best
    point: O(grid + log range) simulations, enough because the total is close to unimodal in the position.
    """

    def consider(pos: int) -> None:
        nonlocal current, best
        if low <= pos <= high and pos != current:
            total = evaluate(pos)
            if total < best - IMPROVEMENT_MS:
                current, best = pos, total

    span = high - low
    if span <= EXHAUSTIVE_RANGE:
        for pos in range(low, high + 1):
            consider(pos)
        return current, best
    for g in range(GRID_POINTS + 1):
        consider(low + span * g // GRID_POINTS)
    step = max(1, span // GRID_POINTS)
    while step >= 1:
        before = current
        consider(current - step)
        consider(current + step)
        if current == before:
            step //= 2
    return current, best


def best_partition(
    profile: ModelProfile, dha: Collection[int], num_devices: int, cost: CostModel | None = None
) -> LoadSchedule:
    """The partition with the lowest simulated latency found by coordinate descent from the even byte split.

    Each round moves one cut at a time to its best position between its neighbours (runs may be emptied when
    host-memory contention makes fewer links faster). Only strict improvements are taken, so the result is
    never predicted worse than `even_byte_split`. Pass `cost` to reuse a CostModel across calls.
    """
    cost = cost or CostModel(profile)
    start = even_byte_split(profile, dha, num_devices)
    if num_devices == 1:
        return start
    loaded = _loaded_positions(profile, dha)
    cuts = _cuts_of(start, loaded)
    num_layers = len(profile.layers)
    best = cost.total(start.sources)
    for _ in range(MAX_DESCENT_ROUNDS):
        before = best
        for c in range(len(cuts)):
            low = cuts[c - 1] if c > 0 else 0
            high = cuts[c + 1] if c + 1 < len(cuts) else len(loaded)

            def evaluate(pos: int, c: int = c) -> float:
                trial = [*cuts[:c], pos, *cuts[c + 1 :]]
                return cost.total(sources_from_cuts(num_layers, loaded, trial))

            cuts[c], best = _search_cut(evaluate, cuts[c], best, low, high)
        if best >= before:
            break
    return schedule_from_cuts(profile, loaded, cuts, num_devices)
