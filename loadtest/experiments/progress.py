"""Progress lines of a long run: what it is doing, with the seconds since it started."""

from __future__ import annotations

import time
from collections.abc import Callable


def progress_printer(tag: str) -> Callable[[str], None]:
    """A ``say(msg)`` that prints ``[<tag> <seconds since this call>s] msg`` and flushes at once.

    Flushed because the runs' output is followed live, often through a pipe to a log file.
    """
    t0 = time.monotonic()

    def say(msg: str) -> None:
        """Progress line with the time since start."""
        print(f"[{tag} {time.monotonic() - t0:7.1f}s] {msg}", flush=True)

    return say


say = progress_printer("experiments")
"""The experiments' progress lines (``[experiments   12.3s] ...``)."""
