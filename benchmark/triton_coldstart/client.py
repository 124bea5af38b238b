"""The gRPC client: one request to a model, checked against its reference, timed as the client and Triton saw it."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from deepplan_backend import serve

from .reference import Reference

RTOL = ATOL = 1e-3
STATS_WAIT_S = 1.0
"""How long a request's split waits for Triton to count it in the model's statistics."""


def grpc_module() -> ModuleType:
    """``tritonclient.grpc``; its client only calls ``rapidjson.loads``, so stdlib json stands in when missing."""
    try:
        import rapidjson  # noqa: F401
    except ImportError:
        sys.modules["rapidjson"] = json
    import tritonclient.grpc as grpcclient

    return grpcclient


@dataclass
class Answer:
    """One response as the client saw it."""

    client_ms: float
    cold: bool
    engine_ms: float
    correct: bool
    max_abs_diff: float
    backend_ms: float | None = None  # Triton's compute_infer for this request: the backend's execute()


class Client:
    """gRPC inference with the inputs of each zoo model, checked against its reference."""

    def __init__(self, url: str, token: str, refs: dict[str, Reference]) -> None:
        self.grpc = grpc_module()
        self.client = self.grpc.InferenceServerClient(url)
        self.headers = {serve.GRPC_ADMIN_HEADER_KEY: token}
        self.refs = refs
        self._inputs: dict[str, list] = {}

    def _infer_inputs(self, model: str) -> list:
        if model not in self._inputs:
            items = []
            for name, array in self.refs[model].inputs.items():
                t = self.grpc.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
                t.set_data_from_numpy(array)
                items.append(t)
            self._inputs[model] = items
        return self._inputs[model]

    def infer(self, name: str, model: str, outputs: tuple[str, ...] = ("output", "cold_start")) -> Answer:
        """One request to Triton model `name` serving zoo model `model`."""
        inputs = self._infer_inputs(model)
        before = self._compute_infer(name)
        start = time.perf_counter()
        result = self.client.infer(name, inputs, client_timeout=120)
        client_ms = (time.perf_counter() - start) * 1e3
        backend_ms = self._backend_ms(name, before)
        out = result.as_numpy("output")
        ref = self.refs[model].output
        correct = bool(out.shape == ref.shape and np.allclose(out, ref, rtol=RTOL, atol=ATOL))
        diff = float(np.abs(out - ref).max()) if out.shape == ref.shape else math.inf
        if "cold_start" in outputs:
            flags = result.as_numpy("cold_start").reshape(-1, 2)[0]
            return Answer(client_ms, bool(flags[0] >= 0.5), float(flags[1]), correct, diff, backend_ms)
        return Answer(client_ms, False, 0.0, correct, diff, backend_ms)

    def _compute_infer(self, name: str) -> tuple[int, int] | None:
        """Triton's (count, cumulative ns) of the model's execute() (its statistics API), to split the client's time."""
        try:
            stats = self.client.get_inference_statistics(name, as_json=True)["model_stats"][0]
            compute = stats["inference_stats"]["compute_infer"]
            return int(compute.get("count", 0)), int(compute["ns"])
        except Exception:  # statistics off or the model unloaded: the split is just not reported
            return None

    def _backend_ms(self, name: str, before: tuple[int, int] | None) -> float | None:
        """The execute() time of the request just answered, once Triton has counted it (None: no clean split).

        Triton records a request's statistics after sending its response: read at once, they may not hold it
        yet, and the next request's difference would then hold two (a CPU test saw a backend time above the
        client's). So this waits, up to `STATS_WAIT_S`, until exactly one more execution is counted.
        """
        if before is None:
            return None
        deadline = time.monotonic() + STATS_WAIT_S
        while (after := self._compute_infer(name)) is not None:
            if after[0] == before[0] + 1:
                return (after[1] - before[1]) / 1e6
            if after[0] > before[0] + 1 or time.monotonic() > deadline:
                return None  # another request of this model was counted too, or this one never was
            time.sleep(0.002)
        return None
