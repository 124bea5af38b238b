"""What a front end learns from the engine side: a request's result, a model's counters and set-up time.

Torch-free on purpose: the per-model Triton front ends import this (and NumPy) only, so a front end costs no
CUDA context and no PyTorch import (see `deepplan_backend.hosting`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

TRACE_ENV = "DEEPPLAN_TRACE"
"""``DEEPPLAN_TRACE=1`` in the server's environment: the backend prints where each batch's time went."""
PHASES = ("validate_ms", "queue_ms", "room_ms", "evict_ms", "engine_ms", "release_ms")
"""A served request's phases: input checks, waiting for the device thread, taking budget (evicting others), of
which evicting the victims (``evict_ms`` lies inside ``room_ms``; the rest is the shared state file's
bookkeeping), the engine's cold or warm forward (inputs in, output back on the host), giving the budget back (0
where an engine host does that after the reply)."""


@dataclass(frozen=True)
class Answer:
    """The output rows of one request and whether it met a cold start, or why it failed.

    ``invalid`` errors are the request's own fault (Triton INVALID_ARG); other errors mean the model could not
    run it now (UNAVAILABLE: cold start failed, budget cannot fit, engine host gone).
    """

    output: np.ndarray | None = None  # float32 [B, ...] (B = the request's batch)
    cold: bool = False
    provision_ms: float = 0.0
    error: str | None = None
    invalid: bool = False
    timing: Mapping[str, float] = field(default_factory=dict)
    """Where the request's time went on the serving side, ms per phase (`PHASES`; with an engine host also
    `host_ms`, its whole handling of the message, `exchange_ms`, the front end's round trip to it, and the two
    directions of that trip: `up_ms`, front end's send to the host's parsed message, `down_ms`, the host's send
    to the front end's parsed reply)."""

    def cold_start_rows(self) -> np.ndarray:
        """The ``cold_start`` output: one ``[met a cold start 0/1, provisioning ms]`` row per batch row.

        Every request of a cold batch waited for the provisioning: each row says so.
        """
        rows = 0 if self.output is None else self.output.shape[0]
        flags = np.array([[1.0 if self.cold else 0.0, self.provision_ms]], dtype=np.float32)
        return np.repeat(flags, rows, axis=0)


@dataclass(frozen=True)
class ModelStatus:
    """Counters a front end publishes as metrics after each batch."""

    evictions: int = 0
    resident_bytes: int = 0


def laps_text(laps: Mapping[str, float]) -> str:
    """'weights 20, plan 3, engine 40': named times (ms), as the set-up lines of the log print them."""
    return ", ".join(f"{k} {v:.0f}" for k, v in laps.items())


def parse_laps(text: str) -> dict[str, float]:
    """`laps_text`'s 'weights 20, plan 3' back to named times (ms), for tools that read the log."""
    laps = {}
    for part in text.split(", "):
        name, _, value = part.rpartition(" ")
        if name:
            laps[name] = float(value)
    return laps


def setup_summary(setup_ms: Mapping[str, object]) -> str:
    """'set up in 812 ms (weights 20, plan 3, engine 40, warm_up 749)' from a model's ``setup_ms`` laps."""
    laps = {str(k): float(v) for k, v in setup_ms.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return f"set up in {sum(laps.values()):.0f} ms ({laps_text(laps)})"
