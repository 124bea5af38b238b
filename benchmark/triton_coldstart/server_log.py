"""The server's log: written to ``server.log``, and what the backend's ready and trace lines say per model."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from .progress import say

TRACE_LINE = re.compile(r"deepplan trace (?P<instance>\S+): \d+ request\(s\) (?P<kind>cold|warm) (?P<fields>.*)")
TRACE_FIELD = re.compile(r"(\w+)=([0-9.]+)")
READY_LINE = re.compile(
    r"deepplan: (?P<instance>\S+) ready: (?P<model>\S+) (?P<dtype>\S+) engine=(?P<engine>\S+) "
    r"devices=\[(?P<devices>[^\]]*)\](?: in (?P<where>engine host pid \d+|this stub))? \((?P<plan>[^)]*)\), "
    r"(?P<need>\d+) bytes per cold start"
)


def model_of_instance(instance: str) -> str:
    """The Triton model of an instance name (`<model>_<group>_<index>`, also the start of a residency key)."""
    return instance.rsplit("_", 2)[0]


class ServerLog:
    """Sink for the server's log: ``server.log``, progress echo of backend lines and errors, PT lines parsed."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w")
        self.ready: dict[str, dict[str, Any]] = {}
        self.cold_traces: dict[str, list[dict[str, float]]] = {}  # model -> its cold requests' phases
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        """Take one log line."""
        with self._lock:
            if self.file.closed:  # a host lingered past `serve.HOST_OUTPUT_WAIT_S`: its last lines are lost
                return
            self.file.write(line)
            self.file.flush()
        t = TRACE_LINE.search(line)
        if t:
            if t["kind"] == "cold":
                model = model_of_instance(t["instance"])
                fields = {k: float(v) for k, v in TRACE_FIELD.findall(t["fields"])}
                self.cold_traces.setdefault(model, []).append(fields)
            return  # one per request: in server.log only
        m = READY_LINE.search(line)
        if m:
            model = model_of_instance(m["instance"])
            self.ready[model] = {
                "devices": re.findall(r"'([^']+)'", m["devices"]),
                "plan": m["plan"],
                "need_bytes": int(m["need"]),
                "engine": m["engine"],
                "process": "instance" if m["where"] in (None, "this stub") else "shared",
            }
        if m or line.startswith("E") and "CudaDriverHelper" not in line or "Traceback" in line:
            say(f"server: {line.rstrip()[:300]}")

    def close(self) -> None:
        """Close ``server.log``."""
        with self._lock:
            self.file.close()
