"""The CUDA driver API (`cuda-bindings`), for what PyTorch does not expose.

The arenas use its virtual memory management, the copy engines its raw copies, streams and events.

One place imports it and turns its ``(CUresult, value...)`` returns into values or exceptions, so every caller
reports a failed call the same way: the call's name and the driver's error name.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def driver() -> Any:
    """The driver API module, imported once (the copy engines call it for every copy they issue)."""
    try:
        from cuda.bindings import driver as module
    except ImportError:  # cuda-python < 12.6 spelled it this way
        from cuda import cuda as module  # type: ignore[no-redef]
    return module


def available() -> bool:
    """Whether the driver API is importable (cuda-bindings / cuda-python)."""
    try:
        driver()
    except ImportError:
        return False
    return True


def check(result: Any, what: str, error: type[Exception] = RuntimeError) -> Any:
    """The value(s) of a driver call's ``(CUresult, ...)`` result, or `error` naming the call and the driver's error."""
    cu = driver()
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != cu.CUresult.CUDA_SUCCESS:
        # The enum's own name: asking the driver (cuGetErrorName) is one more call that can fail.
        raise error(f"{what} failed: {getattr(err, 'name', err)}")
    return rest[0] if len(rest) == 1 else rest
