"""CUDA-graph replay of a model's forward, *including* the per-chunk waits of a cold start.

Eager PyTorch spends far more host time launching a small-batch forward than the GPU spends running it, so
once DHA and PT shrink the copies the host bounds the cold start. A graph launches the whole forward at once.
Because arena and DHA addresses survive eviction (see `arena.py`), one capture serves every later cold start
with the same input shape: the graph's event-wait nodes wait for the chunk events that the copy engine
re-records on each cold start (events created with `external=True`). Warm requests replay a second capture of
the same forward without the wait nodes, made alongside: the waits would be no-ops when resident, yet on an
H200 each cost ~50 us in some processes (see `engine._warm_forward`).

Capture needs the model resident. It happens on the first warm request of each input shape (at most
`MAX_SHAPES` per model and schedule; further shapes run eager); a forward that cannot be captured (host
synchronisation inside the model) is remembered and stays eager.

Every graph of a process on one GPU allocates from one shared memory pool (`shared_pool`): a graph keeps its
activations for its whole life, so per-model pools would hold every model's activations at once (an engine
host serves up to hundreds of models), while a shared pool holds about the largest model's. Sharing is safe
because replays of one GPU never overlap (one device thread, one stream) and each output is copied to the host
before the next replay; static inputs and outputs stay allocated, so no graph reuses another's.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]
MAX_SHAPES = 8
"""Input shapes captured per model and schedule; clients that vary the sequence length freely would otherwise
add a graph (and its static buffers) per length."""

_pools: dict[int, tuple[object, torch.cuda.CUDAGraph, torch.Tensor]] = {}
_pools_lock = threading.Lock()


def shared_pool(device: torch.device) -> object:
    """The graph memory pool of this process on `device` (see the module doc for why one is shared).

    A pool lives only while a graph captured into it does: once the last one is destroyed (a model unloaded, a
    profiling engine closed), PyTorch frees the pool and a later capture into the same handle fails an internal
    assertion (seen on an H200: every capture after the planner's profile stayed eager). So the first call
    captures a one-kernel *keeper* graph into the pool and keeps it for the life of the process. Call it where
    device work is serialised (the capture must not overlap another thread's kernels).
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _pools_lock:
        if index not in _pools:
            with torch.cuda.device(index):
                handle = torch.cuda.graph_pool_handle()
                keeper = torch.cuda.CUDAGraph()
                scratch = torch.zeros(1, device=f"cuda:{index}")
                with torch.cuda.graph(keeper, pool=handle, capture_error_mode="thread_local"):
                    scratch.add_(1)
            _pools[index] = (handle, keeper, scratch)
        return _pools[index][0]


MAX_RETIRED = 2048
"""Graphs (and event lists) of closed engines kept alive (see `retire`); past this many, the oldest are destroyed.
A Fig. 10 run retires an estimated 45 per model (profiling, plan checks, the table's engines). With 256, the run
of session 7's call 6 probably destroyed graphs again from about the seventh model on: there GPT-2's deepplan
engine, running the pipeline schedule itself, was 14 % slower than its pipeline engine."""
_retired: collections.deque[object] = collections.deque(maxlen=MAX_RETIRED)


def retire(graphs: Iterable[CapturedForward | None], events: Sequence[torch.cuda.Event] | None) -> None:
    """Keep a closing engine's graphs, and the events their wait nodes wait on, alive for the rest of the process.

    On 4 x H200 (session 7, ``scripts/warm_variance_probe.py --keep-graphs``), once graphs with event-wait nodes
    had been destroyed, some graphs captured afterwards spent ~50 us in each wait node: GPT-2-Medium cold starts
    took 40-42 ms instead of 32.5-34 ms, with the same kernel times. That hit every model loaded after the
    planner's profiling engines closed, or after another model was unloaded. Keeping the destroyed graphs alive
    removed it. A retired graph is never replayed (its weights' addresses are gone); it is kept as the probe kept
    it, with its static input and output buffers (a few KB to 0.6 MB of device memory each).
    """
    for captured in graphs:
        if captured is not None:
            _retired.append(captured)
    if events:
        _retired.append(list(events))


def signature(inputs: dict[str, torch.Tensor]) -> Signature:
    """What a captured graph is specialised on: input names, shapes and dtypes."""
    return tuple((name, tuple(t.shape), t.dtype) for name, t in sorted(inputs.items()))


@dataclass
class CapturedForward:
    """A captured forward: static input buffers, the graph, and the buffer its output lands in."""

    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    output: torch.Tensor

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Copy `inputs` into the static buffers and replay; the result aliases the static output."""
        for name, tensor in inputs.items():
            self.inputs[name].copy_(tensor, non_blocking=True)
        self.graph.replay()
        return self.output


def capture_forward(
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    up_front: Sequence[torch.cuda.Event],
    waits: Sequence[tuple[nn.Module, Sequence[torch.cuda.Event]]],
    pool: Any,
) -> CapturedForward | None:
    """Capture `module(**inputs)` with event waits before the given modules; None if it cannot be captured."""
    static = {name: t.clone() for name, t in inputs.items()}
    device = next(iter(static.values())).device
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires (lazy inits, autotuning)
        module(**static)
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    handles = []
    for target, events in waits:

        def hook(_m: nn.Module, _a: object, events: Sequence[torch.cuda.Event] = events) -> None:
            stream = torch.cuda.current_stream()
            for event in events:
                stream.wait_event(event)

        handles.append(target.register_forward_pre_hook(hook))
    try:
        with torch.cuda.graph(graph, pool=pool):
            stream = torch.cuda.current_stream()
            for event in up_front:
                stream.wait_event(event)
            output = module(**static)
    except RuntimeError as exc:  # e.g. a .item() inside the model: not capturable, stay eager
        log.warning("forward could not be captured as a CUDA graph, staying eager: %s", exc)
        torch.cuda.synchronize(device)
        return None
    finally:
        for handle in handles:
            handle.remove()
    return CapturedForward(graph, static, output)
