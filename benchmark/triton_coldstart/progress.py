"""The cold-start benchmark's progress lines (``[coldstart   12.3s] ...``, seconds since the run started)."""

from __future__ import annotations

from loadtest.experiments.progress import progress_printer

say = progress_printer("coldstart")
"""Print one progress line with the time since start."""
