"""A model made ready for cold starts: built (or loaded), traced into a layer table, packed into host memory.

Identical weights are packed once per process: several served instances of the same (source, dtype, seed)
share one pinned host copy, which is what lets a server hold hundreds of instances of one model.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from dataclasses import dataclass

import torch

from .answer import laps_text
from .host_store import HostStore
from .layers import LayerTable, build_layer_table
from .plan import PlanKey
from .zoo import ZooModel, load_model

TRACE_SEQ_LEN = 8
"""Sequence length of the forward that observes layer order: order does not depend on length, cost does."""


@dataclass
class PreparedModel:
    """The model module bound to its packed host store, and the layer table describing the packing."""

    model: ZooModel
    table: LayerTable
    store: HostStore
    prepare_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    """Where `prepare` spent its time: build (with the imports it triggers), table, pack (pinning included)."""

    @property
    def fingerprint(self) -> str:
        """Structure digest a plan must match (see `LayerTable.fingerprint`)."""
        return self.table.fingerprint(self.model.family)

    def plan_key(self, batch_size: int, seq_len: int | None, gpu_name: str, graphs: bool = False) -> PlanKey:
        """The plan repository key for serving this model in the given shape on the given GPU, eager or as graphs."""
        seq = 1 if self.model.family == "resnet" else (self.model.default_seq_len if seq_len is None else seq_len)
        return PlanKey(self.model.name, batch_size, seq, self.model.dtype, gpu_name, "graphs" if graphs else "eager")


def prepare(name_or_path: str, dtype: str = "float32", seed: int = 0, pin: bool | None = None) -> PreparedModel:
    """Build the model, observe its execution order, and pack its tensors into (pinned) host memory."""
    start = time.perf_counter()
    model = load_model(name_or_path, dtype=dtype, seed=seed)
    built = time.perf_counter()
    trace = model.example_inputs(1, min(TRACE_SEQ_LEN, model.max_seq_len), seed=seed)
    table = build_layer_table(model.module, trace)
    traced = time.perf_counter()
    store = HostStore.pack(model.module, table, pin=pin)
    packed = time.perf_counter()
    laps = {"build": built - start, "table": traced - built, "pack": packed - traced}
    return PreparedModel(model, table, store, {k: v * 1e3 for k, v in laps.items()})


_shared_lock = threading.Lock()
_shared_stores: dict[tuple[str, str, int], PreparedModel] = {}


def prepare_shared(name_or_path: str, dtype: str = "float32", seed: int = 0) -> PreparedModel:
    """Like `prepare`, but instances with the same weights share one packed host store.

    Each call gets its own module object (an engine rebinds its module's tensors to its own device bytes), but
    the clone's tensors are the shared host views, so N instances cost one host copy of the weights.
    """
    key = (name_or_path, dtype, seed)
    with _shared_lock:
        base = _shared_stores.get(key)
        if base is None:
            base = prepare(name_or_path, dtype, seed)
            _shared_stores[key] = base
            laps = laps_text(base.prepare_ms)
            print(f"deepplan: host weights of {name_or_path} ({dtype}) prepared: {laps} ms", flush=True)
    module = base.model.module
    keep = {id(t): t for t in (*module.parameters(), *module.buffers())}
    clone = copy.deepcopy(module, memo=dict(keep))
    return PreparedModel(dataclasses.replace(base.model, module=clone), base.table, base.store)


def gpu_name(device: torch.device) -> str:
    """The name plans are keyed by: the GPU's marketing name, or `cpu`."""
    if device.type != "cuda":
        return "cpu"
    return torch.cuda.get_device_name(device)
