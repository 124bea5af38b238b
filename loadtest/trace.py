"""Azure Functions 2019 invocation traces, mapped onto model instances as in the DeepPlan paper (Fig. 14).

File layout (``invocations_per_function_md.anon.dNN.csv`` of the dataset, or ``invocations.csv`` of a
sample): ``HashOwner,HashApp,HashFunction,Trigger,<minute>,<minute>,...`` with one row per function and
its invocation count per minute. The minute numbers are read from the header: the full dataset has
``1..1440`` but samples may start elsewhere (e.g. ``480..959``).

The mapping:

1. sort functions by their count over the whole file (the "daily count"), most invoked first;
2. scale every count by one factor so the mean rate over all minutes of the file is ``target_rate``;
3. fold function ``i`` (in that order) onto model instance ``i mod N``;
4. keep a window of minutes ``[window_start, window_start + window_minutes)``;
5. replay each minute in ``60 / time_scale`` seconds with Poisson arrivals inside it (seeded).

``time_scale`` compresses the trace's *time axis* only: a minute lasts ``60 / time_scale`` s and its
expected count is divided by ``time_scale``, so the request rate stays the one of the mapping (the
trace's shape is replayed faster, not its load multiplied).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.schedule import Schedule

KEY_COLUMNS = ("HashOwner", "HashApp", "HashFunction", "Trigger")
DAY_FILE_PATTERN = "invocations_per_function_md.anon.d{day:02d}.csv"
SAMPLE_FILE = "invocations.csv"


class TraceError(ValueError):
    """A trace file is missing or malformed, or a mapping does not fit it."""


@dataclass(frozen=True)
class InvocationTrace:
    """Invocation counts per function and minute, as read from one CSV file.

    Attributes:
        functions: ``owner/app/function`` key of each row, in file order.
        minutes: int64 [M], the minute numbers of the header (contiguous, ascending).
        counts: int32 [F, M], invocations of function f in minute ``minutes[m]``.
        source: the file it was read from.
    """

    functions: tuple[str, ...]
    minutes: np.ndarray
    counts: np.ndarray
    source: str = ""

    def daily_counts(self) -> np.ndarray:
        """Invocations of each function over all minutes of the file, int64 [F]."""
        return self.counts.sum(axis=1, dtype=np.int64)


def find_invocation_file(trace: str | Path, day: int = 2) -> Path:
    """Resolve ``--trace-dir`` to one invocation CSV.

    Accepts a CSV file itself, or a folder holding the dataset's day file
    (``invocations_per_function_md.anon.d<day>.csv``, the paper used day 2) or a sample's
    ``invocations.csv``.
    """
    path = Path(trace).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise TraceError(
            f"trace path {path} does not exist (run scripts/download_azure_trace.sh, or "
            f"python3 -m loadtest.make_trace --out {path})"
        )
    for name in (DAY_FILE_PATTERN.format(day=day), SAMPLE_FILE):
        if (path / name).is_file():
            return path / name
    found = sorted(p.name for p in path.glob("*.csv"))
    raise TraceError(
        f"no {DAY_FILE_PATTERN.format(day=day)} or {SAMPLE_FILE} in {path} (CSV files there: {found or 'none'})"
    )


def _parse_header(header: list[str], path: Path) -> np.ndarray:
    if tuple(header[: len(KEY_COLUMNS)]) != KEY_COLUMNS:
        raise TraceError(f"{path}: header must start with {','.join(KEY_COLUMNS)}, got {header[:4]}")
    try:
        minutes = np.array([int(h) for h in header[len(KEY_COLUMNS) :]], dtype=np.int64)
    except ValueError as exc:
        raise TraceError(f"{path}: minute columns must be integers ({exc})") from exc
    if minutes.size == 0:
        raise TraceError(f"{path}: header has no minute columns")
    if np.any(np.diff(minutes) != 1):
        # Windows and the day mean are defined on a contiguous run of minutes.
        raise TraceError(f"{path}: minute columns must be contiguous and ascending, got {minutes[:5]}...")
    return minutes


def read_invocations(path: str | Path) -> InvocationTrace:
    """Read an invocation CSV, taking the minute numbers from its header."""
    path = Path(path)
    functions: list[str] = []
    rows: list[np.ndarray] = []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise TraceError(f"{path} is empty") from None
        minutes = _parse_header(header, path)
        width = len(KEY_COLUMNS) + minutes.size
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != width:
                raise TraceError(f"{path}:{line_no}: expected {width} fields, got {len(row)}")
            try:
                # Converted row by row: a full day (~46k x 1440 cells) as Python strings would need GBs.
                counts = np.array(row[len(KEY_COLUMNS) :], dtype=np.float64)
            except ValueError as exc:
                raise TraceError(f"{path}:{line_no}: invocation counts must be numbers ({exc})") from exc
            if np.any(counts < 0):
                raise TraceError(f"{path}:{line_no}: negative invocation count")
            functions.append("/".join(row[:3]))
            rows.append(counts.astype(np.int32))  # a full day: ~46k x 1440 cells, 265 MB as int32
    if not rows:
        raise TraceError(f"{path} has a header but no function rows")
    return InvocationTrace(tuple(functions), minutes, np.vstack(rows), str(path))


@dataclass(frozen=True)
class TraceMapping:
    """How a trace becomes per-instance request rates (the paper's Fig. 14 recipe).

    Attributes:
        instances: number of model instances N; function i (by daily count) goes to instance i mod N.
        target_rate: mean request rate over all minutes of the file, in req/s.
        window_start: first replayed minute number (as in the header); None = the file's first minute.
        window_minutes: number of replayed minutes; None = to the end of the file.
        time_scale: trace minutes replayed per 60 s of wall time (>= 1 compresses; rate unchanged).
    """

    instances: int
    target_rate: float
    window_start: int | None = None
    window_minutes: int | None = None
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.instances <= 0:
            raise TraceError(f"instances must be > 0, got {self.instances}")
        if self.target_rate <= 0:
            raise TraceError(f"target_rate must be > 0 req/s, got {self.target_rate}")
        if self.window_minutes is not None and self.window_minutes <= 0:
            raise TraceError(f"window_minutes must be > 0, got {self.window_minutes}")
        if self.time_scale <= 0:
            raise TraceError(f"time_scale must be > 0, got {self.time_scale}")


@dataclass(frozen=True)
class InstanceRates:
    """Expected requests per instance and trace minute after scaling and folding.

    Attributes:
        minutes: int64 [W], the window's minute numbers.
        per_minute: float64 [N, W], expected requests of instance n in trace minute ``minutes[w]``
            (before time compression).
        scale: factor applied to the raw invocation counts.
        function_instance: int64 [F], instance of each function (file order).
    """

    minutes: np.ndarray
    per_minute: np.ndarray
    scale: float
    function_instance: np.ndarray


def map_to_instances(trace: InvocationTrace, mapping: TraceMapping) -> InstanceRates:
    """Sort, scale, fold and window a trace (steps 1-4 of the module docstring)."""
    daily = trace.daily_counts()
    total = float(daily.sum())
    if total <= 0:
        raise TraceError(f"{trace.source}: the trace has no invocations")
    # Mean rate over the file's minutes = total / (M * 60 s); scale it to the target.
    scale = mapping.target_rate * trace.minutes.size * 60.0 / total
    # Stable sort on -count: ties keep file order, so the mapping is deterministic.
    order = np.argsort(-daily, kind="stable")
    function_instance = np.empty_like(order)
    function_instance[order] = np.arange(order.size) % mapping.instances

    start = int(trace.minutes[0]) if mapping.window_start is None else mapping.window_start
    last = int(trace.minutes[-1])
    length = last - start + 1 if mapping.window_minutes is None else mapping.window_minutes
    if start < trace.minutes[0] or start + length - 1 > last:
        raise TraceError(
            f"window of minutes [{start}, {start + length - 1}] is outside the trace's "
            f"[{int(trace.minutes[0])}, {last}] ({trace.source})"
        )
    first_col = start - int(trace.minutes[0])
    window = trace.counts[:, first_col : first_col + length].astype(np.float64)
    per_minute = np.zeros((mapping.instances, length), dtype=np.float64)
    np.add.at(per_minute, function_instance, window)
    return InstanceRates(
        minutes=trace.minutes[first_col : first_col + length].copy(),
        per_minute=per_minute * scale,
        scale=scale,
        function_instance=function_instance,
    )


def rates_schedule(rates: InstanceRates, time_scale: float = 1.0, seed: int = 0, description: str = "") -> Schedule:
    """Poisson arrivals inside each replayed minute (step 5 of the module docstring).

    Within one minute each instance's arrivals form a Poisson process of constant rate: their number
    is Poisson with the minute's expected count and their times are uniform inside the minute.
    """
    rng = np.random.default_rng(seed)
    minute_s = 60.0 / time_scale
    expected = rates.per_minute / time_scale
    counts = rng.poisson(expected)
    inst_idx, minute_idx = np.nonzero(counts)
    reps = counts[inst_idx, minute_idx]
    instances = np.repeat(inst_idx, reps)
    starts = np.repeat(minute_idx, reps) * minute_s
    times = starts + rng.uniform(0.0, minute_s, size=instances.size)
    order = np.argsort(times, kind="stable")
    duration = rates.minutes.size * minute_s
    times = np.minimum(times[order], np.nextafter(duration, 0.0))  # uniform() can round up to the bound
    return Schedule(
        times_s=times,
        instances=instances[order].astype(np.int64),
        duration_s=duration,
        num_instances=rates.per_minute.shape[0],
        expected_rate=float(expected.sum() / duration),
        description=description,
    )


def trace_schedule(trace: InvocationTrace, mapping: TraceMapping, seed: int = 0) -> Schedule:
    """The whole recipe: an invocation trace and a mapping to an arrival schedule."""
    rates = map_to_instances(trace, mapping)
    description = (
        f"Azure trace {Path(trace.source).name}: day mean {mapping.target_rate:g} req/s folded onto "
        f"{mapping.instances} instances, minutes {int(rates.minutes[0])}..{int(rates.minutes[-1])}, "
        f"time scale {mapping.time_scale:g}, seed {seed}"
    )
    return rates_schedule(rates, mapping.time_scale, seed, description)
