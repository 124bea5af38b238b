"""The layer table: every module that directly owns tensors, in the order a real forward runs them.

Registration order lies (a model may define its head before its body, or call a block twice); the order in
which forward pre-hooks fire on a real input does not. A tensor shared by several modules (GPT-2's tied
embedding and LM head) belongs to the first module that runs, and the others depend on that layer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

ALIGNMENT = 256
"""Byte alignment of every tensor in the packed layout: what cudaMalloc gives, and safe for any dtype view."""


def align(n: int) -> int:
    """Round `n` up to the packed layout's alignment."""
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


@dataclass(frozen=True)
class TensorEntry:
    """One tensor owned by a layer, and where it sits inside the layer's packed bytes."""

    attr: str
    is_parameter: bool
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    nbytes: int


@dataclass(frozen=True)
class SharedEntry:
    """An attribute of this layer that aliases a tensor owned by an earlier layer."""

    attr: str
    is_parameter: bool
    owner_layer: int
    owner_attr: str


@dataclass(frozen=True)
class Layer:
    """One row of the table: a module, the tensors it owns (packed), and the layers it must wait for."""

    index: int
    name: str
    tensors: tuple[TensorEntry, ...]
    shared: tuple[SharedEntry, ...]
    nbytes: int
    observed: bool

    @property
    def depends_on(self) -> tuple[int, ...]:
        """Layers whose copies must be complete before this one runs (itself and owners of shared tensors)."""
        owners = sorted({s.owner_layer for s in self.shared if s.owner_layer != self.index})
        return (self.index, *owners)


@dataclass(frozen=True)
class LayerTable:
    """All layers of a model in execution order, with the byte offset of each layer in the packed layout."""

    layers: tuple[Layer, ...]
    offsets: tuple[int, ...]
    total_bytes: int

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    @property
    def nbytes(self) -> tuple[int, ...]:
        """Packed size of every layer, in order."""
        return tuple(layer.nbytes for layer in self.layers)

    def fingerprint(self, family: str) -> str:
        """Digest of the structure (names, shapes, dtypes, order): what a plan depends on, not the weight values."""
        h = hashlib.sha256(family.encode())
        for layer in self.layers:
            h.update(f"|{layer.name}".encode())
            for t in layer.tensors:
                h.update(f":{t.attr}{t.shape}{t.dtype}".encode())
            for s in layer.shared:
                h.update(f":{s.attr}->{s.owner_layer}.{s.owner_attr}".encode())
        return h.hexdigest()[:16]


def _own_tensors(module: nn.Module) -> list[tuple[str, bool, torch.Tensor]]:
    found: list[tuple[str, bool, torch.Tensor]] = [
        (name, True, p) for name, p in module._parameters.items() if p is not None
    ]
    found += [(name, False, b) for name, b in module._buffers.items() if b is not None]
    return found


def _execution_order(root: nn.Module, inputs: dict[str, torch.Tensor]) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()
    handles = []
    for name, module in root.named_modules():
        if not _own_tensors(module):
            continue

        def hook(_mod: nn.Module, _args: object, name: str = name) -> None:
            if name not in seen:
                seen.add(name)
                order.append(name)

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            root(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return order


def build_layer_table(root: nn.Module, trace_inputs: dict[str, torch.Tensor]) -> LayerTable:
    """Observe one forward of `root` on `trace_inputs` and lay its tensors out in execution order.

    Modules that own tensors but never ran on the trace input go first: nothing tells us when they are
    needed, so they are made ready before anything runs.
    """
    modules = dict(root.named_modules())
    observed = _execution_order(root, trace_inputs)
    unobserved = [n for n, m in modules.items() if _own_tensors(m) and n not in set(observed)]
    owner_of: dict[int, tuple[int, str]] = {}
    layers: list[Layer] = []
    offsets: list[int] = []
    cursor = 0
    for index, name in enumerate(unobserved + observed):
        tensors: list[TensorEntry] = []
        shared: list[SharedEntry] = []
        offset = 0
        for attr, is_param, tensor in _own_tensors(modules[name]):
            key = id(tensor)
            if key in owner_of:
                owner_layer, owner_attr = owner_of[key]
                shared.append(SharedEntry(attr, is_param, owner_layer, owner_attr))
                continue
            owner_of[key] = (index, attr)
            nbytes = tensor.numel() * tensor.element_size()
            tensors.append(TensorEntry(attr, is_param, tuple(tensor.shape), tensor.dtype, offset, nbytes))
            offset += align(nbytes)
        layers.append(Layer(index, name, tuple(tensors), tuple(shared), offset, name in set(observed)))
        offsets.append(cursor)
        cursor += offset
    return LayerTable(tuple(layers), tuple(offsets), cursor)


def bind_layer(root_modules: dict[str, nn.Module], layer: Layer, tensors: dict[str, torch.Tensor]) -> None:
    """Point a layer's module attributes at the given tensors (by attribute name), without copying.

    Writing into `_parameters` directly skips `nn.Parameter` wrapping: a cold start rebinds hundreds of
    tensors and the wrapper's cost would sit on the critical path.
    """
    module = root_modules[layer.name]
    for entry in layer.tensors:
        store = module._parameters if entry.is_parameter else module._buffers
        store[entry.attr] = tensors[entry.attr]  # type: ignore[assignment]


def bind_shared(root_modules: dict[str, nn.Module], table: LayerTable) -> None:
    """Re-point every shared attribute at its owner's current tensor (after the owners were rebound)."""
    for layer in table:
        if not layer.shared:
            continue
        module = root_modules[layer.name]
        for s in layer.shared:
            owner = root_modules[table.layers[s.owner_layer].name]
            owner_store = owner._parameters if _is_param(owner, s.owner_attr) else owner._buffers
            target = module._parameters if s.is_parameter else module._buffers
            target[s.attr] = owner_store[s.owner_attr]  # type: ignore[assignment]  # plain tensors, see bind_layer


def _is_param(module: nn.Module, attr: str) -> bool:
    return attr in module._parameters
