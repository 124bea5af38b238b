"""The ``deepplan`` Python-based Triton backend: a thin adapter over `deepplan_backend.runtime.served_model`.

A model says ``backend: "deepplan"`` and configures itself through ``parameters`` (see
`ServeSettings.KNOWN` and the README): ``model``, ``engine``, ``devices``, ``dtype``, ``plan_repository``,
``seq_len``, ``budget``, ``reserve``, ``residency_dir``, ``seed``, ``plan_batch``, ``graphs``, ``process``,
``target_gpu``.

- ``process: shared`` (default): this stub is a front end with NumPy only; the model's `ServedModel` lives in the
  engine host of its target GPU (`deepplan_backend.hosting`), shared with the other models on that GPU.
  ``process: instance``: the `ServedModel` lives in this stub (one CUDA context per instance); a background
  thread releases each request's budget after its response (`_Settler`), as an engine host does after its reply.
- ``initialize`` packs the host weights (shared by identical models of the process), loads or makes the plan,
  registers with the server-wide residency, warms up (a cold and a warm request, then evicted: every model with
  ``graphs``, capturing its CUDA graphs; else the first model of its kind in the process); the device stays empty.
- ``execute`` answers every request: invalid ones get their own ``TritonError``; valid ones with the same
  shape are run as one batch (cold start per plan if the model is not resident). Outputs: ``output`` and
  ``cold_start`` ([B, 2] = [met a cold start 0/1, provisioning ms]).
- ``DEEPPLAN_TRACE=1`` in the server's environment prints one line per batch saying where its time went in
  this stub (reading inputs, the answer, building responses, metrics) and, from `Answer.timing`, on the
  serving side (exchange with the engine host, validation, device queue, budget, engine, release).
- Metrics (Triton's metrics port): ``deepplan_cold_starts_total``, ``deepplan_evictions_total``,
  ``deepplan_resident_bytes``, and the provisioning-time histogram ``deepplan_provisioning_ms`` (``_bucket{le=...}``,
  ``_sum``, ``_count``). Each metric update is a round trip to the Triton process, so they are made by a
  background thread a moment after the response leaves (`_Metrics`): a scrape may lag a request by milliseconds.
"""

from __future__ import annotations

# Triton's Python-backend stub imports asyncio right after a model's first `execute` returns (it checks whether
# the result is a coroutine). A front end that imports nothing else heavy paid that import, ~33 ms, inside its first
# request's response (client 42 against 8 ms on the CPU host; 48-51 against 11-13 ms on 4 x H200, session 8).
# Imported here, it is paid while the model loads.
import asyncio  # noqa: F401
import collections
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import triton_python_backend_utils as pb_utils

from deepplan_backend.runtime.answer import TRACE_ENV, setup_summary
from deepplan_backend.runtime.crash_policy import prepare_to_die
from deepplan_backend.runtime.gc_pauses import freeze_long_lived

if TYPE_CHECKING:  # the front end imports only what its `process` mode needs
    from deepplan_backend.hosting.host_client import HostedModel
    from deepplan_backend.runtime.served_model import ServedModel

METRICS_REFRESH_S = 1.0
"""How often a model's eviction count and resident bytes are refreshed without a request of its own."""
PUBLISH_DELAY_S = 0.002
"""How long the publisher lets a response leave before its metric updates compete with it for the stub."""
SETTLE_DELAY_S = 0.0005
"""``process: instance``: how long a response has to leave before its request's budget release runs (see `_Settler`)."""
PROVISION_BUCKETS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0)
"""Upper bounds of the provisioning-time histogram's buckets (Prometheus adds ``+Inf``)."""


class _Metrics:
    """The custom metric families of one instance, published by a background thread, off the response path.

    Each update is a round trip to the Triton process (25 us to 0.4 ms seen on the device hosts); made while
    answering, a cold start's two (counter, histogram) and the resident-bytes gauge delayed every response. Requests
    only note what changed and wake the publisher; it also refreshes the eviction count and resident bytes every
    `METRICS_REFRESH_S` (another model's cold start evicts this one without a request here).
    """

    def __init__(self, labels: dict[str, str]) -> None:
        family = pb_utils.MetricFamily
        # The families must outlive their metrics (the stub refuses updates otherwise): keep them on self.
        self.families = [
            family("deepplan_cold_starts_total", "Requests that met a cold start", family.COUNTER),
            family("deepplan_evictions_total", "Models evicted to make room for another", family.COUNTER),
            family("deepplan_resident_bytes", "Device bytes held by the model", family.GAUGE),
            family("deepplan_provisioning_ms", "Cold-start provisioning time, ms", family.HISTOGRAM),
        ]
        cold, evict, resident, provisioning = self.families
        self.cold = cold.Metric(labels=labels)
        self.evictions = evict.Metric(labels=labels)
        self.resident = resident.Metric(labels=labels)
        self.provisioning = provisioning.Metric(labels=labels, buckets=list(PROVISION_BUCKETS_MS))
        self.reported_evictions = 0
        self.reported_resident: int | None = None
        self.pending_cold: collections.deque[float] = collections.deque()
        self.latest: tuple[int, int] | None = None
        self.wake = threading.Event()

    def note(self, provision_ms: list[float], evictions: int, resident_bytes: int) -> None:
        """From a request: its cold starts' provisioning times and the model's status; published soon after."""
        self.pending_cold.extend(provision_ms)
        status = (evictions, resident_bytes)
        if provision_ms or status != (self.reported_evictions, self.reported_resident):
            self.latest = status
            self.wake.set()

    def publish(self, evictions: int, resident_bytes: int) -> None:
        """Publish pending cold starts, then the eviction count and resident bytes (publisher thread only)."""
        while self.pending_cold:
            self.cold.increment(1)
            self.provisioning.observe(self.pending_cold.popleft())
        if evictions > self.reported_evictions:
            self.evictions.increment(evictions - self.reported_evictions)
            self.reported_evictions = evictions
        if resident_bytes != self.reported_resident:
            self.resident.set(resident_bytes)
            self.reported_resident = resident_bytes


class _Settler:
    """``process: instance``: each request's budget release, made by a background thread after its response left.

    The release is a locked update of the server's shared residency state (0.24-0.30 ms of a cold request on
    4 x H100, session 10; a warm one pays it too). An engine host releases after its reply; a stub has no one
    to reply to before returning its responses, so a thread does it a moment later. Until then the model counts
    as in use (never a victim); a request that comes meanwhile goes first, and its own release covers both.
    """

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deepplan-settle", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            if self._stop.is_set():
                return
            time.sleep(SETTLE_DELAY_S)
            self.wake.clear()  # a request answered after this is settled by the next round
            try:
                self.served.settle()
            except Exception as exc:  # the residency state unreadable, ...: the next request's release retries
                print(f"deepplan: budget release failed: {type(exc).__name__}: {exc}", flush=True)

    def stop(self) -> None:
        """Settle what is left and end the thread (model unload)."""
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout=2.0)
        self.served.settle()


class TritonPythonModel:
    """Triton entry points; all logic lives in `ServedModel`, in this process or in an engine host."""

    def initialize(self, args: dict[str, str]) -> None:
        """Host weights, plan, residency registration and the warm-up of a new kind; the device is left empty."""
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        model_dir = Path(args["model_repository"])
        device_id = int(args["model_instance_device_id"]) if args.get("model_instance_kind") == "GPU" else None
        self.name = args["model_instance_name"]
        self.trace = os.environ.get(TRACE_ENV, "") == "1"
        self.max_batch_size = max(1, int(config.get("max_batch_size", 0)))
        self.batched = int(config.get("max_batch_size", 0)) > 0
        # The residency key must be unique per load: Triton loads a model's new version (or a reloaded config)
        # before it unloads the old one, and both instances have the same name.
        key = f"{args['model_instance_name']}#{secrets.token_hex(4)}"
        self.settler: _Settler | None = None
        if (params.get("process") or "shared").strip() == "shared":
            from deepplan_backend.hosting.host_client import HostedModel

            hosted = HostedModel(params, model_dir, key, self.max_batch_size, device_id)
            self.served: HostedModel | ServedModel = hosted
            info = hosted.info
            where = f"engine host pid {info.get('pid')}"
        else:  # process: instance (anything else is refused by ServeSettings with the accepted values)
            from deepplan_backend.runtime.serve_settings import ServeSettings
            from deepplan_backend.runtime.served_model import ServedModel

            settings = ServeSettings.from_parameters(params, model_dir=model_dir)
            prepare_to_die()  # this stub now takes the server-wide residency lock, as an engine host does
            local = ServedModel(settings, key, self.max_batch_size, device_id)
            self.served = local
            self.settler = _Settler(local)
            info = local.describe()
            where = "this stub"
        labels = {
            "model": args["model_name"],
            "instance": args["model_instance_name"],
            "device": str(info["device_name"]),
        }
        self.metrics = _Metrics(labels)
        self.metrics.publish(0, 0)
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_metrics, name="deepplan-metrics", daemon=True)
        self._refresher.start()
        freeze_long_lived()  # the model's objects live as long as it does: keep collector passes from scanning them
        plan = "planned now" if info["planned_now"] else "plan from repository"
        print(
            f"deepplan: {args['model_instance_name']} ready: {info['model']} {info['dtype']} engine={info['engine']} "
            f"devices={info['devices']} in {where} ({plan if info['has_plan'] else 'no plan needed'}), "
            f"{info['need_bytes']} bytes per cold start, device empty; {setup_summary(info.get('setup_ms') or {})}",
            flush=True,
        )

    def _arrays(self, request) -> dict[str, np.ndarray | None]:
        arrays: dict[str, np.ndarray | None] = {}
        for tensor in request.inputs():
            a = _as_numpy(tensor)
            arrays[tensor.name()] = a if self.batched else a[None]
        return arrays

    def execute(self, requests):
        """One response per request, in order; invalid requests get their own error."""
        from deepplan_backend.dlpack import DLPackError
        from deepplan_backend.runtime.answer import Answer

        marks = [time.perf_counter()]
        answers: list[Answer | None] = []
        readable: list[dict[str, np.ndarray | None]] = []
        for request in requests:
            try:
                readable.append(self._arrays(request))
                answers.append(None)
            except DLPackError as exc:  # this request's tensors only; the rest of the batch still runs
                answers.append(Answer(error=str(exc), invalid=True))
        marks.append(time.perf_counter())
        settler = self.settler
        served_answers: list[Answer] = []
        try:
            if readable:
                if settler is None:  # an engine host releases after its reply
                    served_answers = self.served.answer(readable)
                else:
                    served_answers = settler.served.answer(readable, defer_release=True)
            marks.append(time.perf_counter())
            return self._responses(requests, answers, served_answers, marks)
        finally:
            if settler is not None and readable:  # also after a failure: the model must not stay in use
                settler.wake.set()

    def _responses(self, requests: list, answers: list, served_answers: list, marks: list[float]) -> list:
        """One Triton response per request from its answer (`answers` holds None where `served_answers` goes)."""
        served = iter(served_answers)
        responses = []
        cold_ms: list[float] = []
        for answer in (a if a is not None else next(served) for a in answers):
            if answer.error is not None:
                code = pb_utils.TritonError.INVALID_ARG if answer.invalid else pb_utils.TritonError.UNAVAILABLE
                responses.append(_error(answer.error, code))
                continue
            if answer.cold:
                cold_ms.append(answer.provision_ms)
            rows, flags = answer.output, answer.cold_start_rows()
            if not self.batched:
                rows, flags = rows[0], flags[0]
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[_output("output", rows), _output("cold_start", flags)])
            )
        marks.append(time.perf_counter())
        status = self.served.status()
        self.metrics.note(cold_ms, status.evictions, status.resident_bytes)
        if self.trace:
            marks.append(time.perf_counter())
            print(_trace_line(self.name, len(requests), marks, served_answers), flush=True)
        return responses

    def _refresh_metrics(self) -> None:
        """The metrics publisher thread.

        It publishes after a request that changed something (a moment later, so that its response goes first),
        else every `METRICS_REFRESH_S` with the status asked from the engine.
        """
        metrics = self.metrics
        while not self._stop.is_set():
            woken = metrics.wake.wait(METRICS_REFRESH_S)
            if self._stop.is_set():
                break
            try:
                if woken:
                    time.sleep(PUBLISH_DELAY_S)
                    metrics.wake.clear()
                    latest = metrics.latest
                    evictions, resident = latest if latest is not None else (0, 0)
                else:
                    status = self.served.refresh_status()
                    evictions, resident = status.evictions, status.resident_bytes
                metrics.publish(evictions, resident)
            except Exception as exc:  # metrics must never take the model down
                print(f"deepplan: metrics update failed: {exc}", flush=True)

    def finalize(self) -> None:
        """Model unload: give the device memory and the budget back."""
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self.metrics.wake.set()
            self._refresher.join(timeout=2 * METRICS_REFRESH_S)
        settler = getattr(self, "settler", None)
        if settler is not None:
            settler.stop()
        served = getattr(self, "served", None)
        if served is not None:
            served.close()


def _trace_line(name: str, count: int, marks: list[float], answers: list) -> str:
    """``deepplan trace``: one batch's milliseconds in this stub, then on the serving side (first answer)."""
    read, answer, respond, metrics = ((b - a) * 1e3 for a, b in zip(marks, marks[1:], strict=False))
    first = next((a for a in answers if a.error is None), None)
    serving = " ".join(f"{k[:-3]}={v:.3f}" for k, v in (first.timing if first else {}).items())
    cold = "cold" if first is not None and first.cold else "warm"
    return (
        f"deepplan trace {name}: {count} request(s) {cold} execute={(marks[-1] - marks[0]) * 1e3:.3f} "
        f"read={read:.3f} answer={answer:.3f} respond={respond:.3f} metrics={metrics:.3f} | {serving}"
    )


def _as_numpy(tensor: object) -> np.ndarray:
    """An input tensor as a NumPy array, copied out of its DLPack capsule (see `deepplan_backend.dlpack`)."""
    from deepplan_backend.dlpack import array_from_capsule

    return array_from_capsule(tensor.to_dlpack())  # type: ignore[attr-defined]


def _output(name: str, array: np.ndarray) -> object:
    """An output tensor handed over as a DLPack capsule, not through the stub's NumPy 1 ABI."""
    from deepplan_backend.dlpack import capsule_from_array

    return pb_utils.Tensor.from_dlpack(name, capsule_from_array(array))  # type: ignore[attr-defined]


def _error(message: str, code) -> object:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
