"""One residency state file per device against one per server: cold starts of several engine hosts at once.

    python3 -m benchmark.residency_layout [--hosts 4] [--models 20] [--rounds 1000] [--hold-s 0.5]
        [-o results/residency_layout.csv]

A server with one engine host per GPU: each host process owns ``--models`` models on its own device, with a
budget for 4 of them, and runs ``--rounds`` cold starts as fast as it can (`Residency.acquire` with one eviction,
then `Residency.release`), all hosts at once. Timed twice in the same run: with the residency's layout, one state
file and lock per device, and as the baseline, every device in one file and lock (the layout before session 12).
The evict callbacks do nothing: this is the bookkeeping alone. No GPU is needed; the state lives in /dev/shm, as a
server's does.

Second experiment, ``held lock``: a process takes the first device's lock for ``--hold-s`` seconds, as a host that
dies holding it does while its core is written; the other hosts run their cold starts meanwhile. Reported: the
longest cold start among them.
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing as mp
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from deepplan_backend.runtime import residency
from deepplan_backend.runtime.residency import Residency, scratch_state_dir

from .table import write_records

COLUMNS = (
    "experiment",
    "layout",
    "hosts",
    "models_per_host",
    "median_ms",
    "p99_ms",
    "max_ms",
    "median_vs_one_file",
    "cold_starts",
    "host",
)
WARM_UP_ROUNDS = 20
"""Cold starts per host before timing: the first uses build this process's caches."""
LAYOUTS: dict[str, Callable[[str], str]] = {
    "one file": lambda device: "server",  # the baseline: every device's models in one state file, one lock
    "per device": residency.device_file_stem,
}


@contextmanager
def _layout(name: str) -> Iterator[None]:
    """The residency module naming its state files by `LAYOUTS[name]` (inherited by forked hosts)."""
    saved = residency.device_file_stem
    residency.device_file_stem = LAYOUTS[name]  # type: ignore[assignment]  # same signature, as a callable
    try:
        yield
    finally:
        residency.device_file_stem = saved


def _host(folder: str, device: str, models: int, rounds: int, go, out) -> None:
    """One engine host: register `models` on `device` (room for 4), wait for `go`, time `rounds` cold starts."""
    res = Residency(Path(folder))
    keys = [f"{device}/m{i}" for i in range(models)]
    for key in keys:
        res.register(key, device, 4 * 100, lambda: None)
    for k in range(WARM_UP_ROUNDS):
        res.acquire(keys[k % models], 100)
        res.release(keys[k % models], 100)
    out.put(("ready", device, []))
    go.wait()
    times = []
    for k in range(rounds):
        key = keys[(k + WARM_UP_ROUNDS) % models]
        started = time.perf_counter()
        res.acquire(key, 100)
        res.release(key, 100)
        times.append((time.perf_counter() - started) * 1e3)
    out.put(("done", device, times))


def time_hosts(hosts: int, models: int, rounds: int, hold_s: float = 0.0) -> list[float]:
    """Cold-start times (ms) of `hosts` hosts running at once.

    With `hold_s`, another process holds the first device's lock that long from the start, and only the other
    hosts run: their times are returned.
    """
    ctx = mp.get_context("fork")  # the hosts inherit the layout chosen by `_layout`
    with scratch_state_dir("residency-layout-") as folder:
        go, out = ctx.Event(), ctx.Queue()
        first = 1 if hold_s else 0
        procs = [
            ctx.Process(target=_host, args=(folder, f"dev{h}", models, rounds, go, out), daemon=True)
            for h in range(first, hosts)
        ]
        for p in procs:
            p.start()
        try:
            for _ in procs:
                kind, device, _ = out.get(timeout=60)
                if kind != "ready":
                    raise RuntimeError(f"host {device} did not start")
            with open(Path(folder) / f"{residency.device_file_stem('dev0')}.lock", "a+") as lock:
                if hold_s:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                go.set()
                if hold_s:
                    time.sleep(hold_s)
                    fcntl.flock(lock, fcntl.LOCK_UN)
            times: list[float] = []
            for _ in procs:
                _, _, host_times = out.get(timeout=600)
                times.extend(host_times)
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
    return times


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def main() -> None:
    """Command line; see the module docstring."""
    p = argparse.ArgumentParser(prog="python3 -m benchmark.residency_layout", description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=4, help="engine hosts, one device each (default %(default)s)")
    p.add_argument("--models", type=int, default=20, help="models per host, each > 4 (default %(default)s)")
    p.add_argument("--rounds", type=int, default=1000, help="timed cold starts per host (default %(default)s)")
    p.add_argument("--hold-s", type=float, default=0.5, help="held-lock experiment: seconds (0: skip it)")
    p.add_argument("-o", "--output", type=Path, default=Path("results/residency_layout.csv"))
    args = p.parse_args()
    if args.hosts < 2 or args.models <= 4 or args.rounds < 1 or args.hold_s < 0:
        p.error("--hosts must be at least 2, --models more than 4 (the budget holds 4), --rounds at least 1")
    host = f"{platform.node()} ({platform.processor() or platform.machine()})"
    experiments = [("cold starts", 0.0)] + ([("held lock", args.hold_s)] if args.hold_s else [])
    records: list[dict[str, object]] = []
    print(f"{'experiment':12}  {'layout':10}  {'median':>8}  {'p99':>8}  {'max':>8}  vs one file")
    for experiment, hold_s in experiments:
        medians: dict[str, float] = {}
        for name in LAYOUTS:  # the baseline first
            with _layout(name):
                times = time_hosts(args.hosts, args.models, args.rounds, hold_s)
            medians[name] = statistics.median(times)
            ratio = medians["one file"] / medians[name]
            values = (medians[name], _p99(times), max(times), ratio, len(times))
            records.append(dict(zip(COLUMNS, (experiment, name, args.hosts, args.models, *values, host), strict=True)))
            print(
                f"{experiment:12}  {name:10}  {values[0]:8.3f}  {values[1]:8.3f}  {values[2]:8.1f}  {ratio:.2f}x",
                flush=True,
            )
    write_records(records, COLUMNS, args.output)
    print(f"ms per cold start (acquire with one eviction + release); wrote {args.output} and "
          f"{args.output.with_suffix('.json')}")  # fmt: skip


if __name__ == "__main__":
    main()
