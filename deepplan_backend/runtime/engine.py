"""The cold-start executor: provision a model per `LoadSchedule` *while* running it, then serve warm.

A cold start issues every layer's copy at once on the copy engine's streams, binds each layer's module to its
future device bytes (or to its DHA view), and runs the forward with a pre-hook per layer that makes the
compute stream wait for that layer's copy only. Eviction binds the model back to host memory and returns the
device bytes to the driver.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .host_store import HostStore
from .layers import bind_layer, bind_shared
from .plan import DHA, LoadSchedule
from .transfer import CopyJob, DeviceError, make_copy_engine
from .zoo import DTYPES, ZooModel


@dataclass(frozen=True)
class InferenceResult:
    """One answer and how it was obtained."""

    output: torch.Tensor
    cold: bool
    latency_ms: float
    copied_bytes: int


class ColdStartEngine:
    """Runs one model on a target device (plus optional PT peers), cold or warm.

    Not thread-safe: callers serialize requests per engine (the residency manager does).
    """

    def __init__(self, model: ZooModel, store: HostStore, devices: Sequence[torch.device]) -> None:
        if not devices:
            raise DeviceError("an engine needs at least a target device")
        self.model = model
        self.store = store
        self.devices = list(devices)
        self.device = self.devices[0]
        self.copier = make_copy_engine(self.devices)
        self._modules: dict[str, nn.Module] = dict(model.module.named_modules())
        self._arena: torch.Tensor | None = None
        self._dha_layers: tuple[int, ...] = ()

    @property
    def is_resident(self) -> bool:
        """Whether the model's (non-DHA) weights are on the device, so the next request runs warm."""
        return self._arena is not None

    @property
    def resident_bytes(self) -> int:
        """Device bytes held by this model (0 when evicted)."""
        return 0 if self._arena is None else int(self._arena.numel())

    def infer(self, inputs: dict[str, torch.Tensor], schedule: LoadSchedule, overlap: bool = True) -> InferenceResult:
        """Answer one request: warm if resident, else a cold start following `schedule`.

        `overlap=False` is On-Demand: copy everything, wait, then run.
        """
        start = time.perf_counter()
        cold = not self.is_resident
        copied = 0
        with torch.inference_mode():
            device_inputs = self._to_device(inputs)
            if cold:
                copied = schedule.loaded_bytes(self.store.table.nbytes)
                output = self._cold_forward(device_inputs, schedule, overlap)
            else:
                output = self.model.module(**device_inputs)
            result = output.float().cpu()
        return InferenceResult(result, cold, (time.perf_counter() - start) * 1e3, copied)

    def evict(self) -> None:
        """Bind the model back to host memory and give the device bytes back to the driver."""
        if self._arena is None:
            return
        self.store.bind_host(self.model.module)
        self._arena = None
        self._dha_layers = ()
        self.copier.release()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def _to_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = DTYPES[self.model.dtype]
        moved = {}
        for name, tensor in inputs.items():
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            moved[name] = tensor.to(self.device, non_blocking=False)
        return moved

    def _arena_layout(self, schedule: LoadSchedule) -> tuple[dict[int, int], int]:
        table = self.store.table
        if len(schedule.sources) != len(table):
            raise DeviceError(
                f"{self.model.name}: schedule covers {len(schedule.sources)} layers, the model has {len(table)}"
            )
        if schedule.num_devices > len(self.devices):
            raise DeviceError(
                f"{self.model.name}: schedule spreads copies over {schedule.num_devices} devices, "
                f"engine has {len(self.devices)}"
            )
        offsets: dict[int, int] = {}
        cursor = 0
        for i, src in enumerate(schedule.sources):
            if src != DHA:
                offsets[i] = cursor
                cursor += table.layers[i].nbytes
        return offsets, cursor

    def _cold_forward(self, inputs: dict[str, torch.Tensor], schedule: LoadSchedule, overlap: bool) -> torch.Tensor:
        offsets, arena_bytes = self._arena_layout(schedule)
        table = self.store.table
        arena = torch.empty(arena_bytes, dtype=torch.uint8, device=self.device)
        try:
            tokens = self._issue_copies(schedule, offsets, arena, overlap)
            self._bind(schedule, offsets, arena)
            if not overlap:
                for token in tokens.values():
                    self.copier.wait(token)
                output = self.model.module(**inputs)
            else:
                output = self._pipelined_forward(inputs, tokens)
            for token in tokens.values():  # layers this input never ran still had to land before we return
                self.copier.wait(token)
        except BaseException:
            self._arena = arena  # let evict() undo the partial binding and free everything
            self.evict()
            raise
        self._arena = arena
        self._dha_layers = tuple(i for i in range(len(table)) if i not in offsets)
        return output

    def _issue_copies(
        self, schedule: LoadSchedule, offsets: dict[int, int], arena: torch.Tensor, overlap: bool
    ) -> dict[int, object]:
        """Start the copies; returns layer index -> readiness token (layers with no bytes have none)."""
        table = self.store.table
        if not overlap and len(offsets) == len(table):
            # On-Demand with nothing on DHA: the arena mirrors the host layout, so one transfer moves it all.
            token = self.copier.issue([CopyJob(0, self.store.buffer[: table.total_bytes], arena)])[0]
            return {len(table) - 1: token}
        jobs, owners = [], []
        for i, off in offsets.items():
            n = table.layers[i].nbytes
            if n == 0:
                continue
            jobs.append(CopyJob(schedule.sources[i], self.store.layer_bytes(i), arena[off : off + n]))
            owners.append(i)
        return dict(zip(owners, self.copier.issue(jobs), strict=True))

    def _bind(self, schedule: LoadSchedule, offsets: dict[int, int], arena: torch.Tensor) -> None:
        table = self.store.table
        dha_base = None
        for layer in table:
            if layer.index in offsets:
                off = offsets[layer.index]
                base = arena[off : off + layer.nbytes]
            else:
                if dha_base is None:
                    dha_base = self.store.dha_base(self.device)
                start, end = self.store.layer_range(layer.index)
                base = dha_base[start:end]
            bind_layer(self._modules, layer, self.store.layer_views(layer, base))
        bind_shared(self._modules, table)

    def _pipelined_forward(self, inputs: dict[str, torch.Tensor], tokens: dict[int, object]) -> torch.Tensor:
        """Forward where each layer waits only for the copies it depends on, at the moment it starts."""
        table = self.store.table
        pending = dict(tokens)

        def wait_for(indices: Sequence[int]) -> None:
            for i in indices:
                token = pending.pop(i, None)
                if token is not None:
                    self.copier.wait(token)

        # Layers never seen running in the trace forward are made ready up front (see build_layer_table).
        wait_for([layer.index for layer in table if not layer.observed])
        handles = []
        for layer in table:
            if layer.observed and any(i in pending for i in layer.depends_on):
                deps = layer.depends_on
                handles.append(
                    self._modules[layer.name].register_forward_pre_hook(lambda _m, _a, deps=deps: wait_for(deps))
                )
        try:
            return self.model.module(**inputs)
        finally:
            for handle in handles:
                handle.remove()
