"""What the shared budget costs one cold start, by the number of models registered on the server.

    python3 -m benchmark.residency_cost [--models 10 50 200] [--rounds 1000] [-o results/residency_cost.csv]

Every cold start in a server takes budget (`Residency.acquire`, here always evicting the least recently used model,
as a full server does) and releases it after the forward (`Residency.release`). Both are locked uses of one state
file shared by the server's processes, which holds every registered model. This times them for each model count,
with the state encoded as the residency encodes it (marshal) and, as the baseline in the same run, as JSON (what
it used before). The state lives in /dev/shm, as a server's does. The evict callbacks do nothing, so only the
bookkeeping is timed; no GPU is needed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from deepplan_backend.runtime import residency
from deepplan_backend.runtime.residency import Residency, scratch_state_dir

from .table import write_records

COLUMNS = ("models", "codec", "acquire_ms", "release_ms", "cold_start_ms", "vs_json", "rounds", "host")


def _json_encode(state: dict) -> bytes:
    return json.dumps(state, separators=(",", ":")).encode()


def _json_decode(data: bytes) -> dict:
    try:
        state = json.loads(data) if data else {}
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


CODECS: dict[str, tuple[Callable[[dict], bytes], Callable[[bytes], dict]]] = {
    "marshal": (residency._encode, residency._decode),
    "json": (_json_encode, _json_decode),
}


@contextmanager
def _codec(name: str) -> Iterator[None]:
    """The residency module encoding its state with codec `name` for the duration."""
    saved = residency._encode, residency._decode
    residency._encode, residency._decode = CODECS[name]  # type: ignore[assignment]  # same signatures, as callables
    try:
        yield
    finally:
        residency._encode, residency._decode = saved


def time_cold_starts(models: int, rounds: int) -> tuple[float, float]:
    """Median ms of acquire (with one eviction) and of release, over `rounds` cold starts among `models` models."""
    with scratch_state_dir("residency-cost-") as folder:  # where a server keeps its state
        res = Residency(Path(folder))
        for i in range(models):
            res.register(f"m{i}", "dev", 4 * 100, lambda: None)  # room for 4: every cold start evicts one
        acquire, release = [], []
        for k in range(rounds + 20):
            key = f"m{k % models}"
            t0 = time.perf_counter()
            res.acquire(key, 100)
            t1 = time.perf_counter()
            res.release(key, 100)
            t2 = time.perf_counter()
            if k >= 20:  # the first uses build caches
                acquire.append((t1 - t0) * 1e3)
                release.append((t2 - t1) * 1e3)
        for i in range(models):
            res.unregister(f"m{i}")
    return statistics.median(acquire), statistics.median(release)


def main() -> None:
    """Command line; see the module docstring."""
    p = argparse.ArgumentParser(prog="python3 -m benchmark.residency_cost", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=int, nargs="+", default=[10, 50, 200], help="models registered (each > 4)")
    p.add_argument("--rounds", type=int, default=1000, help="cold starts timed per point")
    p.add_argument("-o", "--output", type=Path, default=Path("results/residency_cost.csv"))
    args = p.parse_args()
    if min(args.models) <= 4 or args.rounds < 1:
        p.error("--models must each be more than 4 (the budget holds 4), --rounds at least 1")
    host = f"{platform.node()} ({platform.processor() or platform.machine()})"
    records: list[dict[str, object]] = []
    print(f"{'models':>6}  {'codec':7}  {'acquire':>8}  {'release':>8}  {'cold start':>10}  vs json")
    for n in args.models:
        totals = {}
        for name in ("json", "marshal"):  # the baseline first, alternating per point so drifts hit both
            with _codec(name):
                acq, rel = time_cold_starts(n, args.rounds)
            totals[name] = acq + rel
            ratio = totals["json"] / totals[name]
            records.append(dict(zip(COLUMNS, (n, name, acq, rel, acq + rel, ratio, args.rounds, host), strict=True)))
            print(f"{n:6d}  {name:7}  {acq:8.3f}  {rel:8.3f}  {acq + rel:10.3f}  {ratio:.2f}x", flush=True)
    write_records(records, COLUMNS, args.output)
    print(f"ms per cold start (medians); wrote {args.output} and {args.output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
