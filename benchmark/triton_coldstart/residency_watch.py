"""The server's residency state as the benchmark reads it: which models are resident, bytes against the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .server_log import model_of_instance


class ResidencyWatch:
    """Reads the residency state folder the server's deepplan models share."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._residency: Any = None

    def snapshot(self) -> dict:
        """The residency state of the server's models (shared state folder)."""
        if self._residency is None:
            from deepplan_backend.runtime.residency import Residency

            self._residency = Residency(self.folder)
        return self._residency.snapshot()


def resident(snap: dict) -> dict[str, bool]:
    """Triton model name -> resident, in a `ResidencyWatch.snapshot`."""
    return {model_of_instance(k): bool(e["resident"]) for k, e in snap["models"].items()}


def used_bytes(snap: dict) -> int:
    """Bytes counted against the budget of the models' target device, in a `ResidencyWatch.snapshot`."""
    return sum(int(e["bytes"]) for e in snap["models"].values())
