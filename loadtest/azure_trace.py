r"""Locust file: replay of the Azure Functions 2019 trace, open loop (paper Fig. 14).

Functions sorted by daily count, scaled so the mean over the file's minutes is ``--rate`` req/s,
folded onto the N instances (function i -> instance i mod N); the window ``--window-start`` /
``--window-minutes`` is replayed with Poisson arrivals inside each minute, ``--time-scale`` minutes
per 60 s (see :mod:`loadtest.trace`). Example (paper: day 2, first 180 minutes)::

    scripts/download_azure_trace.sh data/azure2019      # prints the --trace-dir to use
    locust -f loadtest/azure_trace.py --headless --trace-dir data/azure2019 --trace-day 2 \\
        --rate 100 --instances 200 --model-prefix bert-base- --window-minutes 180 \\
        --triton-url localhost:8001 --results-dir results/azure

Without the dataset: ``python3 -m loadtest.make_trace --out traces/synthetic`` and
``--trace-dir traces/synthetic``.
"""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

# Locust imports this file by path with only its own folder on sys.path: make the package importable.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from locust import events  # noqa: E402

from loadtest.open_loop import OpenLoopOptions, OpenLoopUser, add_argument, add_common_arguments  # noqa: E402
from loadtest.schedule import Schedule  # noqa: E402
from loadtest.trace import TraceMapping, find_invocation_file, read_invocations, trace_schedule  # noqa: E402


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add_common_arguments(parser)
    add_argument(
        parser,
        "--trace-dir",
        type=str,
        default="data/azure2019",
        help="folder with the dataset's invocations_per_function_md.anon.dNN.csv (or a sample's "
        "invocations.csv), or one such CSV file (default data/azure2019)",
    )
    add_argument(parser, "--trace-day", type=int, default=2, help="day file to use from --trace-dir (default 2)")
    add_argument(
        parser,
        "--window-start",
        type=int,
        default=-1,
        help="first replayed minute, as numbered in the file's header (default -1: its first minute)",
    )
    add_argument(
        parser,
        "--window-minutes",
        type=int,
        default=180,
        help="number of replayed minutes (default 180; 0: to the end of the file)",
    )
    add_argument(
        parser,
        "--time-scale",
        type=float,
        default=1.0,
        help="trace minutes replayed per 60 s; >1 compresses time at the same req/s (default 1)",
    )


class AzureTraceUser(OpenLoopUser):
    """Replays the mapped Azure Functions trace."""

    def build_schedule(self, opts: OpenLoopOptions, parsed: Namespace) -> tuple[Schedule, dict[str, Any]]:
        """Read the trace, map it onto the instances and draw the arrivals."""
        path = find_invocation_file(str(parsed.trace_dir), int(parsed.trace_day))
        trace = read_invocations(path)
        start = int(parsed.window_start)
        minutes = int(parsed.window_minutes)
        mapping = TraceMapping(
            instances=opts.instances,
            target_rate=opts.rate,
            window_start=None if start < 0 else start,
            window_minutes=None if minutes <= 0 else minutes,
            time_scale=float(parsed.time_scale),
        )
        return trace_schedule(trace, mapping, opts.seed), {"workload": "azure_trace", "trace_file": str(path)}
