"""Plan one model on the devices it will run on: profile, plan, check.

The one path behind every planning site (the `planner` CLI, `benchmark --make-plans`, a served model's plan on
first load), so a change to how plans are made reaches all three. They differ only in how many samples they can
afford: a server that plans while Triton loads the model takes fewer than the CLI.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepplan_backend.runtime.plan import Plan
from deepplan_backend.runtime.prepared import PreparedModel

from .planning import make_plan
from .profiler import profile_model
from .validation import Verdict, validate_plan


@dataclass(frozen=True)
class Sampling:
    """Samples per measurement: warm-up and timed rounds of the profile, then of the on-device check."""

    warmup: int = 3
    repeats: int = 10
    check_warmup: int = 2
    check_repeats: int = 5


def plan_on_devices(
    prepared: PreparedModel,
    devices: Sequence[torch.device],
    device_counts: Sequence[int],
    batch_size: int = 1,
    seq_len: int | None = None,
    graphs: bool = False,
    sampling: Sampling = Sampling(),  # noqa: B008 - frozen, so one shared default is safe
    progress: bool = True,
) -> tuple[Plan, list[Verdict]]:
    """Profile `prepared` on `devices`, plan it for `device_counts`, and check its DeepPlan variants there.

    Returns the checked plan (not yet saved) and the check's verdicts; the devices are left empty.
    """
    profile = profile_model(
        prepared, devices, batch_size, seq_len, sampling.warmup, sampling.repeats, progress=progress, graphs=graphs
    )
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    plan = make_plan(profile, device_counts, created)
    return validate_plan(
        plan, prepared, devices, batch_size, seq_len, graphs, sampling.check_warmup, sampling.check_repeats
    )
