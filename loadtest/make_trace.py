"""Generate a synthetic invocation trace in the Azure Functions 2019 CSV layout.

For tests and for users without the dataset. The shape imitates the real one coarsely: a heavy-tailed
popularity (a few functions take most invocations), a diurnal swing, timer-like functions firing on a
fixed period, and on/off bursty ones.

Usage::

    python3 -m loadtest.make_trace --out traces/synthetic            # day file, minutes 1..1440
    python3 -m loadtest.make_trace --out t.csv --first-minute 480 --minutes 480 --functions 100
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from pathlib import Path

import numpy as np

from loadtest.trace import DAY_FILE_PATTERN, KEY_COLUMNS

TRIGGERS = ("http", "timer", "queue", "event", "storage", "orchestration", "others")


def generate_counts(functions: int, minutes: int, seed: int = 0, mean_per_minute: float = 2.0) -> np.ndarray:
    """Invocation counts int64 [functions, minutes] with the shape described in the module docstring."""
    if functions <= 0 or minutes <= 0:
        raise ValueError(f"functions ({functions}) and minutes ({minutes}) must be > 0")
    rng = np.random.default_rng(seed)
    popularity = rng.lognormal(mean=0.0, sigma=2.0, size=functions)
    popularity *= mean_per_minute / popularity.mean()
    t = np.arange(minutes)
    phase = rng.uniform(0, 2 * np.pi, size=(functions, 1))
    diurnal = 1.0 + 0.6 * np.sin(2 * np.pi * t / 1440.0 + phase)
    rates = popularity[:, None] * diurnal
    kind = rng.choice(3, size=functions, p=[0.6, 0.25, 0.15])  # 0 steady, 1 timer, 2 bursty
    for f in np.nonzero(kind == 1)[0]:
        period = int(rng.choice([1, 5, 10, 15, 60]))
        mask = (t % period) == rng.integers(period)
        rates[f] = np.where(mask, max(1.0, popularity[f] * period), 0.0)
    for f in np.nonzero(kind == 2)[0]:
        on = rng.random(minutes) < 0.1
        rates[f] = np.where(on, rates[f] * 10.0, rates[f] * 0.05)
    return rng.poisson(rates).astype(np.int64)


def write_trace(path: Path, counts: np.ndarray, first_minute: int = 1, seed: int = 0) -> Path:
    """Write counts as an invocation CSV with header minutes ``first_minute..``; returns the path."""
    rng = np.random.default_rng(seed + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    minutes = range(first_minute, first_minute + counts.shape[1])

    def fake_hash(kind: str, i: int) -> str:
        return hashlib.sha256(f"{kind}-{seed}-{i}".encode()).hexdigest()

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*KEY_COLUMNS, *minutes])
        for f, row in enumerate(counts):
            owner = int(rng.integers(max(1, counts.shape[0] // 4)))
            trigger = TRIGGERS[int(rng.integers(len(TRIGGERS)))]
            writer.writerow(
                [fake_hash("owner", owner), fake_hash("app", f // 2), fake_hash("function", f), trigger, *row.tolist()]
            )
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints the written file's path."""
    parser = argparse.ArgumentParser(prog="python3 -m loadtest.make_trace", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="CSV file to write, or a folder (then the dataset's day file name is used)",
    )
    parser.add_argument("--functions", type=int, default=200, help="number of functions (rows), default 200")
    parser.add_argument("--first-minute", type=int, default=1, help="first minute number of the header, default 1")
    parser.add_argument("--minutes", type=int, default=1440, help="number of minute columns, default 1440")
    parser.add_argument("--day", type=int, default=2, help="day number used in the file name of --out folder")
    parser.add_argument(
        "--mean-per-minute", type=float, default=2.0, help="mean invocations per function and minute, default 2"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed, default 0")
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.suffix.lower() != ".csv":
        out = out / DAY_FILE_PATTERN.format(day=args.day)
    counts = generate_counts(args.functions, args.minutes, args.seed, args.mean_per_minute)
    print(write_trace(out, counts, args.first_minute, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
