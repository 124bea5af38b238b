r"""Locust file: synthetic open-loop workload (paper Fig. 12/13).

N model instances, each request to one chosen uniformly, Poisson arrivals at ``--rate`` req/s for
``--duration-s`` seconds. Example::

    locust -f loadtest/synthetic.py --headless --instances 100 --model-prefix bert-base- \\
        --rate 100 --duration-s 120 --slo-ms 100 --triton-url localhost:8001 --results-dir results/syn

The schedule itself is :func:`loadtest.schedule.poisson_schedule` (re-exported here); import it from
``loadtest.schedule`` outside Locust, since importing this file patches the process with gevent.
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
from loadtest.schedule import Schedule, poisson_schedule  # noqa: E402

__all__ = ["SyntheticUser", "poisson_schedule"]


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add_common_arguments(parser)
    add_argument(parser, "--duration-s", type=float, default=60.0, help="length of the schedule in s (default 60)")


class SyntheticUser(OpenLoopUser):
    """Replays a Poisson schedule with uniform instance choice."""

    def build_schedule(self, opts: OpenLoopOptions, parsed: Namespace) -> tuple[Schedule, dict[str, Any]]:
        """Poisson arrivals at ``--rate`` over ``--duration-s``."""
        schedule = poisson_schedule(opts.instances, opts.rate, float(parsed.duration_s), opts.seed)
        return schedule, {"workload": "synthetic"}
