"""The cold-start executor: provision a model per `LoadSchedule` *while* running it, then serve warm.

Everything about a schedule that does not change between cold starts is computed once into a `_Layout`: the
arena (a stable address range, see `arena.py`), every weight's view into it or into the DHA alias of host
memory, and the copy chunks. A cold start then only maps the arena, issues the chunk copies, re-points the
module's attributes (dictionary writes), and runs the forward with pre-hooks that make the compute stream wait
for a chunk right before the first layer that needs it. Eviction unmaps the arena (memory back to the driver)
and points the module back at host memory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .arena import Arena, make_arena
from .chunking import chunk_runs
from .graphs import MAX_SHAPES, CapturedForward, Signature, capture_forward, retire, shared_pool, signature
from .host_store import HostStore
from .layers import LayerTable
from .plan import DHA, LoadSchedule
from .transfer import CopyJob, DeviceError, make_copy_engine
from .zoo import DTYPES, ZooModel

Assignment = tuple[dict, str, torch.Tensor]
"""(module._parameters or module._buffers, attribute, tensor): one write that binds a weight."""


@dataclass(frozen=True)
class ColdPhases:
    """When a cold start's host reached its milestones, ms from the request's start (what the planner fits)."""

    mapped_ms: float
    """Device memory mapped: the first copy can be issued from here on."""
    launch_ms: float
    """Copies issued and weights bound: the forward's first kernel is launched from here on."""


@dataclass(frozen=True)
class InferenceResult:
    """One answer and how it was obtained."""

    output: torch.Tensor
    cold: bool
    latency_ms: float
    copied_bytes: int
    phases: ColdPhases | None = None
    """Milestones of a cold start (None when warm)."""

    @property
    def setup_ms(self) -> float:
        """Host set-up of a cold start: request to the forward's first launch (0 when warm)."""
        return self.phases.launch_ms if self.phases is not None else 0.0


@dataclass(frozen=True)
class _Chunk:
    slot: int
    host_start: int
    arena_start: int
    nbytes: int


@dataclass
class _Layout:
    """What one schedule needs on every cold start, built once."""

    schedule: LoadSchedule
    arena: Arena
    binding: list[Assignment]
    chunks: list[_Chunk]
    up_front: list[int]  # chunks waited before the forward (layers that never ran in the trace)
    hooks: list[tuple[str, list[int]]]  # (module name, chunks it waits for), first use in execution order
    copied_bytes: int
    jobs: list[CopyJob] = field(default_factory=list)
    events: list[torch.cuda.Event] | None = None  # one per chunk, re-recorded each cold start (graph mode)
    captured: dict[Signature, CapturedForward | None] = field(default_factory=dict)  # cold: with the chunk waits
    warm_graphs: dict[Signature, CapturedForward | None] = field(default_factory=dict)  # resident: without them
    demand_jobs: list[CopyJob] = field(default_factory=list)  # On-Demand: the same bytes in as few copies as possible


def _assignments(
    modules: dict[str, nn.Module], table: LayerTable, views_of: dict[int, dict[str, torch.Tensor]]
) -> list[Assignment]:
    """Bindings for every owned tensor, then for every shared attribute (pointing at its owner's tensor)."""
    out: list[Assignment] = []
    for layer in table:
        module = modules[layer.name]
        for t in layer.tensors:
            out.append(
                (module._parameters if t.is_parameter else module._buffers, t.attr, views_of[layer.index][t.attr])
            )
    for layer in table:
        module = modules[layer.name]
        for s in layer.shared:
            out.append(
                (
                    module._parameters if s.is_parameter else module._buffers,
                    s.attr,
                    views_of[s.owner_layer][s.owner_attr],
                )
            )
    return out


def _apply(binding: list[Assignment]) -> None:
    for store, attr, tensor in binding:
        store[attr] = tensor


class ColdStartEngine:
    """Runs one model on a target device (plus optional PT peers), cold or warm.

    Not thread-safe: callers serialize requests per engine (the served model does).
    """

    def __init__(
        self, model: ZooModel, store: HostStore, devices: Sequence[torch.device], graphs: bool = False
    ) -> None:
        """`graphs=True` replays captured CUDA graphs for the cold and warm forward (ignored on CPU)."""
        if not devices:
            raise DeviceError("an engine needs at least a target device")
        self.model = model
        self.store = store
        self.devices = list(devices)
        self.device = self.devices[0]
        self.copier = make_copy_engine(self.devices)
        self._modules: dict[str, nn.Module] = dict(model.module.named_modules())
        table = store.table
        host_views = {layer.index: store.layer_views(layer) for layer in table}
        self._host_binding = _assignments(self._modules, table, host_views)
        self._layouts: dict[LoadSchedule, _Layout] = {}
        self._resident: _Layout | None = None
        self.graphs = graphs and self.device.type == "cuda"

    @property
    def is_resident(self) -> bool:
        """Whether the model's (non-DHA) weights are on the device, so the next request runs warm."""
        return self._resident is not None

    @property
    def resident_bytes(self) -> int:
        """Device bytes held by this model (0 when evicted)."""
        return 0 if self._resident is None else self._resident.copied_bytes

    def infer(self, inputs: dict[str, torch.Tensor], schedule: LoadSchedule, overlap: bool = True) -> InferenceResult:
        """Answer one request: warm if resident (under any schedule), else a cold start following `schedule`.

        `overlap=False` is On-Demand: copy everything, wait, then run.
        """
        start = time.perf_counter()
        cold = self._resident is None
        marks: list[float] = []
        with self._on_target(), torch.inference_mode():
            device_inputs = self._to_device(inputs)
            if cold:
                layout = self._layout(schedule)
                output = self._cold_forward(device_inputs, layout, overlap, marks)
            else:
                output = self._warm_forward(device_inputs)
            result = output.float().cpu()
        copied = layout.copied_bytes if cold else 0
        phases = ColdPhases(*((t - start) * 1e3 for t in marks)) if cold else None
        return InferenceResult(result, cold, (time.perf_counter() - start) * 1e3, copied, phases)

    def provision(self, schedule: LoadSchedule) -> float:
        """Make the model resident without running it (pre-warming); returns the set-up host time in ms.

        Set-up is what a cold start spends before its first launch: mapping the arena, issuing the copies and
        binding the weights.
        """
        if self._resident is not None:
            return 0.0
        layout = self._layout(schedule)
        start = time.perf_counter()
        layout.arena.map()
        self._resident = layout
        try:
            # Arena views made inside a request are inference tensors, hence inference mode here too.
            with self._on_target(), torch.inference_mode():
                tokens = self.copier.issue(layout.jobs)
            _apply(layout.binding)
        except BaseException:
            self.evict()
            raise
        setup_ms = (time.perf_counter() - start) * 1e3
        for token in tokens:
            self.copier.wait(token)
        return setup_ms

    def _on_target(self) -> contextlib.AbstractContextManager[object]:
        """The target GPU current on this thread (its primary context current for driver calls too).

        The copy engine's driver calls run in the current context; from GPU 0's context, a copy into arena
        memory mapped for GPU 1 only fails with CUDA_ERROR_INVALID_VALUE (seen in Triton with targets 1-3).
        """
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.cuda.device(self.device)

    def prepare(self, schedule: LoadSchedule) -> None:
        """Build the schedule's layout now (address range, weight views, chunk plan), not in the first cold start.

        Serving calls this at model load: in a device run (BERT-Base, H200, Fig. 12 sweep) first cold starts had a
        median provisioning time of 89 ms against 23 ms for later ones, part of it one-time set-up. No device
        memory stays mapped.
        """
        with self._on_target():
            self._layout(schedule)

    def replays_graph(self, schedule: LoadSchedule, inputs: dict[str, torch.Tensor]) -> bool:
        """Whether cold starts of `schedule` with `inputs` (as given to `infer`) replay a captured graph.

        False when they run eager: graphs are off, nothing was captured yet, or the capture failed.
        """
        layout = self._layouts.get(schedule)
        if layout is None or not layout.captured:
            return False
        with self._on_target():
            return layout.captured.get(signature(self._to_device(inputs))) is not None

    def evict(self) -> None:
        """Point the model back at host memory and give the device bytes back to the driver."""
        layout = self._resident
        if layout is None:
            return
        self._resident = None
        _apply(self._host_binding)
        if self.device.type == "cuda":
            for d in self.devices:
                torch.cuda.synchronize(d)
        layout.arena.unmap()
        self.copier.release()

    def close(self) -> None:
        """Evict and release every reserved address range."""
        self.evict()
        for layout in self._layouts.values():
            layout.arena.close()
            retire([*layout.captured.values(), *layout.warm_graphs.values()], layout.events)
        self._layouts.clear()

    def _to_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = DTYPES[self.model.dtype]
        moved = {}
        for name, tensor in inputs.items():
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            moved[name] = tensor.to(self.device)
        return moved

    def _layout(self, schedule: LoadSchedule) -> _Layout:
        layout = self._layouts.get(schedule)
        if layout is None:
            layout = self._build_layout(schedule)
            self._layouts[schedule] = layout
        return layout

    def _check(self, schedule: LoadSchedule) -> None:
        n = len(self.store.table)
        if len(schedule.sources) != n:
            raise DeviceError(f"{self.model.name}: schedule covers {len(schedule.sources)} layers, the model has {n}")
        if schedule.num_devices > len(self.devices):
            raise DeviceError(
                f"{self.model.name}: schedule spreads copies over {schedule.num_devices} devices, "
                f"engine has {len(self.devices)}"
            )

    def _build_layout(self, schedule: LoadSchedule) -> _Layout:
        self._check(schedule)
        table, store = self.store.table, self.store
        offsets: dict[int, int] = {}
        cursor = 0
        for i, src in enumerate(schedule.sources):
            if src != DHA:
                offsets[i] = cursor
                cursor += table.layers[i].nbytes
        arena = make_arena(cursor, self.device)
        arena.map()  # views of a CUDA arena are built while it is mapped
        try:
            views: dict[int, dict[str, torch.Tensor]] = {}
            dha_base = None
            for layer in table:
                if layer.index in offsets:
                    off = offsets[layer.index]
                    base = arena.tensor[off : off + layer.nbytes]
                else:
                    dha_base = dha_base if dha_base is not None else store.dha_base(self.device)
                    start, end = store.layer_range(layer.index)
                    base = dha_base[start:end]
                views[layer.index] = store.layer_views(layer, base)
        finally:
            arena.unmap()
        chunks, chunk_of = self._chunks(schedule, offsets)
        up_front, hooks = self._waits(chunk_of)
        layout = _Layout(schedule, arena, _assignments(self._modules, table, views), chunks, up_front, hooks, cursor)
        layout.jobs = [
            CopyJob(
                c.slot,
                store.buffer[c.host_start : c.host_start + c.nbytes],
                arena.tensor[c.arena_start : c.arena_start + c.nbytes],
            )
            for c in chunks
        ]
        whole = len(offsets) == len(table) and all(src == 0 for src in schedule.sources)
        # With nothing on DHA the arena mirrors the host layout, so On-Demand moves it in one transfer.
        layout.demand_jobs = (
            [CopyJob(0, store.buffer[:cursor], arena.tensor[:cursor])] if whole and cursor else layout.jobs
        )
        if self.graphs:
            layout.events = [torch.cuda.Event(external=True) for _ in chunks]
            for event in layout.events:
                # PyTorch creates an event lazily at its first record, and waiting on one never created is
                # silently skipped, also while capturing: a graph captured before the first pipelined cold
                # start (e.g. after On-Demand) would hold no wait nodes at all and read weights too early.
                event.record(self.copier.copy_stream)  # type: ignore[attr-defined]
        return layout

    def _chunks(self, schedule: LoadSchedule, offsets: dict[int, int]) -> tuple[list[_Chunk], dict[int, int]]:
        """The schedule's copies as `chunk_runs` groups them (the planner predicts the same ones)."""
        table = self.store.table
        chunks: list[_Chunk] = []
        chunk_of: dict[int, int] = {}
        for run in chunk_runs(schedule.sources, table.nbytes):
            first, last = run[0], run[-1]
            start = table.offsets[first]
            nbytes = table.offsets[last] + table.layers[last].nbytes - start
            if nbytes:  # a run of layers that only share others' weights has nothing to copy or wait for
                for i in run:
                    chunk_of[i] = len(chunks)
                chunks.append(_Chunk(schedule.sources[first], start, offsets[first], nbytes))
        return chunks, chunk_of

    def _waits(self, chunk_of: dict[int, int]) -> tuple[list[int], list[tuple[str, list[int]]]]:
        """Which chunks to wait for before the forward, and at which layer's start each other chunk is first needed."""
        table = self.store.table
        needed: set[int] = set()
        up_front: list[int] = []
        for layer in table:
            if not layer.observed:
                for i in layer.depends_on:
                    c = chunk_of.get(i)
                    if c is not None and c not in needed:
                        needed.add(c)
                        up_front.append(c)
        hooks: list[tuple[str, list[int]]] = []
        for layer in table:
            if not layer.observed:
                continue
            new = []
            for i in layer.depends_on:
                c = chunk_of.get(i)
                if c is not None and c not in needed:
                    needed.add(c)
                    new.append(c)
            if new:
                hooks.append((layer.name, new))
        return up_front, hooks

    def _cold_forward(
        self, inputs: dict[str, torch.Tensor], layout: _Layout, overlap: bool, marks: list[float]
    ) -> torch.Tensor:
        """Map, issue the copies, bind, run; appends the `ColdPhases` milestones (perf_counter) to `marks`."""
        layout.arena.map()
        self._resident = layout  # from here on, a failure must evict to unmap and unbind
        marks.append(time.perf_counter())
        try:
            if overlap:
                tokens = self.copier.issue(layout.jobs, layout.events)
            else:
                tokens = self.copier.issue(layout.demand_jobs)
            _apply(layout.binding)
            marks.append(time.perf_counter())
            captured = layout.captured.get(signature(inputs)) if self.graphs else None
            if not overlap:
                for token in tokens:
                    self.copier.wait(token)
            if captured is not None:
                output = captured.run(inputs)  # its wait nodes wait for the events just recorded
            elif not overlap:
                output = self.model.module(**inputs)
            else:
                output = self._pipelined_forward(inputs, layout, tokens)
            for token in tokens:  # chunks this input never needed still must land before the request ends
                self.copier.wait(token)
        except BaseException:
            self.evict()
            raise
        return output

    def _warm_forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Resident forward: a captured graph when graphs are on (captured on first use per shape), else eager."""
        layout = self._resident
        if not self.graphs or layout is None or layout.events is None:
            return self.model.module(**inputs)
        sig = signature(inputs)
        if sig not in layout.captured:
            if len(layout.captured) >= MAX_SHAPES:
                return self.model.module(**inputs)
            waits = [(self._modules[name], [layout.events[c] for c in ids]) for name, ids in layout.hooks]
            up_front = [layout.events[c] for c in layout.up_front]
            pool = shared_pool(self.device)  # here, under the caller's device serialisation (see shared_pool)
            cold = capture_forward(self.model.module, inputs, up_front, waits, pool)
            layout.captured[sig] = cold
            # Resident requests need no chunk waits, and on an H200 a graph's wait nodes cost ~50 us each in some
            # processes (GPT-2-Medium: ~100 waits, warm 28.7 against 24.3 ms; `scripts/warm_variance_probe.py`).
            layout.warm_graphs[sig] = capture_forward(self.model.module, inputs, [], [], pool) if cold else None
        graph = layout.warm_graphs[sig] or layout.captured[sig]
        return graph.run(inputs) if graph is not None else self.model.module(**inputs)

    def _pipelined_forward(
        self, inputs: dict[str, torch.Tensor], layout: _Layout, tokens: list[object]
    ) -> torch.Tensor:
        """Forward where each layer waits only for the chunks it is the first to need, as it starts."""
        wait = self.copier.wait
        for c in layout.up_front:
            wait(tokens[c])
        handles = []
        for name, chunk_ids in layout.hooks:
            toks = [tokens[c] for c in chunk_ids]

            def hook(_m: nn.Module, _a: object, toks: list[object] = toks) -> None:
                for t in toks:
                    wait(t)

            handles.append(self._modules[name].register_forward_pre_hook(hook))
        try:
            return self.model.module(**inputs)
        finally:
            for h in handles:
                h.remove()
