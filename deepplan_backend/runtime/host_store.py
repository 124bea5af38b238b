"""The host weight store: a model's tensors packed in ONE pinned host buffer, and DHA views of it.

Layers are packed one after another in execution order; DHA views let GPU kernels read them in place.

Packing matters twice: a layer (or a run of layers) is copied in one transfer instead of one per tensor
(hundreds of small copies run far below the link's bandwidth), and the device arena can mirror the layout so
that a copy is a plain byte range.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers import Layer, LayerTable, bind_layer, bind_shared
from .pinned_memory import exact_pinned_empty


class _HostPointer:
    """Exposes a pinned host byte range through `__cuda_array_interface__`.

    With unified virtual addressing a pinned host pointer is also a valid device pointer, so `torch.as_tensor`
    on this object yields a CUDA tensor aliasing host memory (DHA) in stock PyTorch.
    """

    def __init__(self, host: torch.Tensor) -> None:
        self._host = host  # keeps the pinned memory alive as long as any DHA view exists
        self.__cuda_array_interface__: dict[str, Any] = {
            "shape": (host.numel(),),
            "typestr": "|u1",
            "data": (host.data_ptr(), False),
            "version": 3,
            "strides": None,
        }


class HostStore:
    """Pinned (when CUDA is present) packed copy of a model's tensors, plus per-layer views into it."""

    def __init__(self, table: LayerTable, buffer: torch.Tensor, pinned: bool | None = None) -> None:
        """A store over `buffer`; `pinned` says whether it is page-locked (by default the tensor's allocator is asked).

        A mapped weights image is registered by hand, which the allocator may not know of.
        """
        if buffer.dtype != torch.uint8 or buffer.numel() < table.total_bytes:
            raise ValueError("host buffer must be uint8 and hold the whole packed layout")
        self.table = table
        self.buffer = buffer
        self._pinned = pinned
        self._dha: dict[int, torch.Tensor] = {}

    @classmethod
    def pack(cls, root: nn.Module, table: LayerTable, pin: bool | None = None) -> HostStore:
        """Copy every owned tensor of `root` into a new packed buffer, then rebind `root` to views of it.

        Afterwards the module's original tensors are garbage, so the model is held in host memory once. A pinned
        buffer is page-locked at its exact size (`pinned_memory`), not PyTorch's next power of two.
        """
        if pin is None:
            pin = torch.cuda.is_available()
        nbytes = max(table.total_bytes, 1)
        if not pin:
            return cls.pack_into(root, table, torch.empty(nbytes, dtype=torch.uint8))
        try:
            buffer = exact_pinned_empty(nbytes)
        except OSError as exc:
            # PyTorch's allocator pins through another call (cudaHostAlloc); it costs up to twice the size
            print(f"deepplan: exact-size pinning refused ({exc}); pinning through PyTorch's allocator", flush=True)
            buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        return cls.pack_into(root, table, buffer, pinned=True)

    @classmethod
    def pack_into(
        cls, root: nn.Module, table: LayerTable, buffer: torch.Tensor, pinned: bool | None = None
    ) -> HostStore:
        """`pack` into a given buffer (e.g. a weights image's mapping); `pinned` as for the constructor."""
        store = cls(table, buffer, pinned)
        modules = dict(root.named_modules())
        for layer in table:
            module = modules[layer.name]
            views = store.layer_views(layer)
            for entry in layer.tensors:
                src = (module._parameters if entry.is_parameter else module._buffers)[entry.attr]
                assert src is not None
                views[entry.attr].copy_(src.detach())
            bind_layer(modules, layer, views)
        bind_shared(modules, table)
        return store

    @property
    def pinned(self) -> bool:
        """Whether the buffer is page-locked (required for async copies and DHA)."""
        return self._pinned if self._pinned is not None else bool(self.buffer.is_pinned())

    def layer_range(self, index: int) -> tuple[int, int]:
        """Byte range [start, end) of layer `index` in the packed buffer."""
        start = self.table.offsets[index]
        return start, start + self.table.layers[index].nbytes

    def layer_bytes(self, index: int) -> torch.Tensor:
        """The layer's packed bytes (a uint8 view of the host buffer)."""
        start, end = self.layer_range(index)
        return self.buffer[start:end]

    def layer_views(self, layer: Layer, base: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Typed views of a layer's tensors inside `base` (default: this host buffer at the layer's offset).

        `base` is a uint8 tensor holding exactly the layer's packed bytes, e.g. a slice of a device arena.
        """
        if base is None:
            base = self.layer_bytes(layer.index)
        return {t.attr: base[t.offset : t.offset + t.nbytes].view(t.dtype).view(t.shape) for t in layer.tensors}

    def dha_base(self, device: torch.device) -> torch.Tensor:
        """A uint8 tensor on `device` aliasing the whole pinned buffer: GPU kernels read host memory directly."""
        if device.type != "cuda":
            return self.buffer
        if not self.pinned:
            raise RuntimeError("DHA needs the host store in pinned memory")
        index = device.index if device.index is not None else torch.cuda.current_device()
        view = self._dha.get(index)
        if view is None:
            view = torch.as_tensor(_HostPointer(self.buffer[: self.table.total_bytes]), device=device)
            self._dha[index] = view
        return view

    def bind_host(self, root: nn.Module) -> None:
        """Point every tensor of `root` back at host memory (evicted state: a valid CPU model, no GPU memory)."""
        modules = dict(root.named_modules())
        for layer in self.table:
            bind_layer(modules, layer, self.layer_views(layer))
        bind_shared(modules, self.table)
