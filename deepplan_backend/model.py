"""The ``deepplan`` Python-based Triton backend: a thin adapter over `deepplan_backend.runtime.served_model`.

A model says ``backend: "deepplan"`` and configures itself through ``parameters`` (see
`ServeSettings.KNOWN` and the README): ``model``, ``engine``, ``devices``, ``dtype``, ``plan_repository``,
``seq_len``, ``budget``, ``reserve``, ``residency_dir``, ``seed``, ``plan_batch``.

- ``initialize`` packs the host weights (shared by identical models of this process), loads or makes the plan,
  registers with the server-wide residency; the device stays empty.
- ``execute`` answers every request: invalid ones get their own ``TritonError``; valid ones with the same
  shape are run as one batch (cold start per plan if the model is not resident). Outputs: ``output`` and
  ``cold_start`` ([B, 2] = [met a cold start 0/1, provisioning ms]).
- Metrics (Triton's metrics port): ``deepplan_cold_starts_total``, ``deepplan_evictions_total``,
  ``deepplan_resident_bytes``, and the provisioning-time histogram as counters
  ``deepplan_provisioning_ms_bucket{le=...}``, ``deepplan_provisioning_ms_sum``, ``deepplan_provisioning_ms_count``
  (the 2.41 Python backend offers only COUNTER and GAUGE metric kinds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

PROVISION_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, float("inf"))


class _Metrics:
    """The custom metric families of one instance (created once, in `initialize`)."""

    def __init__(self, labels: dict[str, str]) -> None:
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.families = [
            pb_utils.MetricFamily("deepplan_cold_starts_total", "Requests that met a cold start", counter),
            pb_utils.MetricFamily("deepplan_evictions_total", "Models evicted to make room for another", counter),
            pb_utils.MetricFamily("deepplan_resident_bytes", "Device bytes held by the model", gauge),
            pb_utils.MetricFamily(
                "deepplan_provisioning_ms_bucket", "Cold-start provisioning time histogram (cumulative)", counter
            ),
            pb_utils.MetricFamily("deepplan_provisioning_ms_sum", "Sum of cold-start provisioning times", counter),
            pb_utils.MetricFamily("deepplan_provisioning_ms_count", "Number of cold-start provisionings", counter),
        ]
        cold, evict, resident, bucket, total, count = self.families
        self.cold = cold.Metric(labels=labels)
        self.evictions = evict.Metric(labels=labels)
        self.resident = resident.Metric(labels=labels)
        self.buckets = [
            (le, bucket.Metric(labels={**labels, "le": "+Inf" if le == float("inf") else f"{le:g}"}))
            for le in PROVISION_BUCKETS_MS
        ]
        self.sum = total.Metric(labels=labels)
        self.count = count.Metric(labels=labels)
        self.reported_evictions = 0

    def cold_start(self, provision_ms: float) -> None:
        self.cold.increment(1)
        self.count.increment(1)
        self.sum.increment(provision_ms)
        for le, metric in self.buckets:
            if provision_ms <= le:
                metric.increment(1)

    def sync(self, evictions: int, resident_bytes: int) -> None:
        """Evictions happen on the residency thread; they are published from the request thread."""
        if evictions > self.reported_evictions:
            self.evictions.increment(evictions - self.reported_evictions)
            self.reported_evictions = evictions
        self.resident.set(resident_bytes)


class TritonPythonModel:
    """Triton entry points; all logic lives in `ServedModel`."""

    def initialize(self, args: dict[str, str]) -> None:
        """Host weights, plan and residency registration; the device stays empty until the first request."""
        from deepplan_backend.runtime.served_model import ServedModel, ServeSettings

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        model_dir = Path(args["model_repository"])
        settings = ServeSettings.from_parameters(params, model_dir=model_dir)
        device_id = int(args["model_instance_device_id"]) if args.get("model_instance_kind") == "GPU" else None
        self.max_batch_size = max(1, int(config.get("max_batch_size", 0)))
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.served = ServedModel(settings, args["model_instance_name"], self.max_batch_size, device_id)
        self.input_names = self.served.model.input_names
        labels = {
            "model": args["model_name"],
            "instance": args["model_instance_name"],
            "device": self.served.device_name,
        }
        self.metrics = _Metrics(labels)
        self.metrics.sync(0, 0)
        plan = "planned now" if self.served.planned_now else "plan from repository"
        print(
            f"deepplan: {args['model_instance_name']} ready: {self.served.model.name} {settings.dtype} "
            f"engine={settings.engine} devices={[str(d) for d in self.served.devices]} "
            f"({plan if self.served.plan is not None else 'no plan needed'}), "
            f"{self.served.need_bytes} bytes per cold start, device empty",
            flush=True,
        )

    def _arrays(self, request) -> dict[str, np.ndarray | None]:
        from torch.utils.dlpack import from_dlpack

        arrays: dict[str, np.ndarray | None] = {}
        for tensor in request.inputs():
            # Through DLPack and torch, not `as_numpy()`: the stub's NumPy view is built for NumPy 1's ABI
            # (see `_output`); torch converts with the NumPy actually installed.
            a = from_dlpack(tensor.to_dlpack()).numpy()
            arrays[tensor.name()] = a if self.batched else a[None]
        return arrays

    def execute(self, requests):
        """One response per request, in order; invalid requests get their own error."""
        from deepplan_backend.runtime.served_model import RequestError

        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for i, request in enumerate(requests):
            try:
                inputs = self.served.validate(self._arrays(request))
            except RequestError as exc:
                responses[i] = _error(str(exc), pb_utils.TritonError.INVALID_ARG)
                continue
            signature = tuple((k, tuple(v.shape[1:])) for k, v in sorted(inputs.items()))
            groups.setdefault(signature, []).append((i, inputs))
        for members in groups.values():
            self._run_group(members, responses)
        self.metrics.sync(self.served.evictions, self.served.resident_bytes)
        return responses

    def _run_group(self, members: list[tuple[int, dict]], responses: list) -> None:
        import torch

        names = members[0][1].keys()
        batch = {k: torch.cat([inputs[k] for _, inputs in members]) for k in names}
        try:
            output, cold, provision_ms = self.served.infer(batch)
        except Exception as exc:  # cold start failed, budget cannot fit, ...: every member gets the reason
            msg = f"{self.served.key}: {type(exc).__name__}: {exc}"
            for i, _ in members:
                responses[i] = _error(msg, pb_utils.TritonError.UNAVAILABLE)
            return
        if cold:
            self.metrics.cold_start(provision_ms)
        out = output.to(torch.float32)
        start = 0
        for i, inputs in members:
            n = next(iter(inputs.values())).shape[0]
            rows = out[start : start + n]
            # Every request of a cold batch waited for the provisioning: each row says so.
            flags = torch.tensor([[1.0 if cold else 0.0, provision_ms]], dtype=torch.float32).repeat(n, 1)
            start += n
            if not self.batched:
                rows, flags = rows[0], flags[0]
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[_output("output", rows), _output("cold_start", flags)]
            )

    def finalize(self) -> None:
        """Model unload: give the device memory and the budget back."""
        served = getattr(self, "served", None)
        if served is not None:
            served.close()


def _output(name: str, tensor: object) -> object:
    """An output tensor handed over through DLPack, not NumPy.

    The Python backend stub is built against NumPy 1's ABI: on a host with NumPy 2 (seen on the H200 machine,
    where NumPy 2.5 was installed beside nvidia-pytriton without its `numpy<2` pin) outputs made from NumPy
    arrays reached clients empty. DLPack does not go through NumPy at all.
    """
    from torch.utils.dlpack import to_dlpack

    return pb_utils.Tensor.from_dlpack(name, to_dlpack(tensor.contiguous()))  # type: ignore[attr-defined]


def _error(message: str, code) -> object:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
