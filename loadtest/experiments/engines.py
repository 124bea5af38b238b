"""The engine variants an experiment compares, and the backend ``engine`` parameter each one sets."""

from __future__ import annotations

from collections.abc import Sequence

ENGINES: dict[str, tuple[str, bool]] = {
    "pipeline": ("pipeline", False),  # PipeSwitch-style pipelined load, target GPU only, eager as PipeSwitch runs
    "deepplan": ("deepplan", False),  # DeepPlan (DHA + pipeline), target GPU only
    "deepplan+pt": ("deepplan", True),  # DeepPlan with parallel transmission over peer GPUs (devices auto)
}
"""Engine variant -> (backend ``engine`` parameter, uses peer GPUs). The DeepPlan variants take the backend's
default execution (CUDA graphs on GPU); the PipeSwitch baseline runs eager (``graphs false``) unless a
``--param graphs=...`` says otherwise."""


def parse_engines(names: Sequence[str]) -> list[str]:
    """Check engine variant names (case-insensitive, ``deepplan-pt`` accepted); keeps the order."""
    out = []
    for name in names:
        key = name.lower().replace("-pt", "+pt").replace("_pt", "+pt")
        if key not in ENGINES:
            raise ValueError(f"engine {name!r}: choose from {', '.join(ENGINES)}")
        out.append(key)
    return out
