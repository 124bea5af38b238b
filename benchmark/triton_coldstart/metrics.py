"""Triton's metrics port: the deepplan counters and gauges, summed over all models."""

from __future__ import annotations

import re
import urllib.request

METRIC_LINE = re.compile(r"^(deepplan_\w+)\{([^}]*)\}\s+(\S+)$")
METRICS_SETTLE_S = 1.5
"""Wait before each metrics scrape of the eviction run: a victim's eviction count reaches Triton's metrics when its
own front end refreshes it, every second (`deepplan_backend.model.METRICS_REFRESH_S`), not at the eviction."""


def scrape_metrics(url: str) -> dict[str, float]:
    """Sum of each ``deepplan_*`` counter/gauge over all models (Triton's metrics port)."""
    totals: dict[str, float] = {}
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if m and "_bucket" not in m[1]:
            totals[m[1]] = totals.get(m[1], 0.0) + float(m[3])
    return totals
