"""The packed host store (`runtime/host_store.py`): one buffer, per-layer views, rebinding the module."""

from __future__ import annotations

import pytest
import torch

from deepplan_backend.runtime.host_store import HostStore
from deepplan_backend.runtime.layers import build_layer_table
from deepplan_backend.runtime.zoo import TINY_MODELS, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inside(t: torch.Tensor, buffer: torch.Tensor) -> bool:
    start = buffer.data_ptr()
    return start <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= start + buffer.numel()


def _packed(name: str):
    model = load_model(name)
    inputs = model.example_inputs(2, 8 if model.family != "resnet" else None, seed=4)
    with torch.inference_mode():
        before = model.module(**inputs)
    table = build_layer_table(model.module, model.example_inputs(1, 8 if model.family != "resnet" else None))
    store = HostStore.pack(model.module, table)
    return model, inputs, before, table, store


@pytest.mark.parametrize("name", TINY_MODELS)
def test_packed_module_computes_the_same_output(name: str) -> None:
    model, inputs, before, _, store = _packed(name)
    with torch.inference_mode():
        after = model.module(**inputs)
    assert torch.equal(before, after)
    for t in (*model.module.parameters(), *model.module.buffers()):
        assert _inside(t, store.buffer)


def test_buffer_holds_exactly_the_table() -> None:
    _, _, _, table, store = _packed("tiny-bert")
    assert store.buffer.dtype == torch.uint8
    assert store.buffer.numel() == table.total_bytes
    assert store.pinned is False  # no CUDA here: pageable memory
    assert store.table is table


def test_tied_weight_stays_tied_after_packing() -> None:
    model, _, _, table, store = _packed("tiny-gpt2")
    inner = model.module.inner
    assert inner.lm_head.weight.data_ptr() == inner.transformer.wte.weight.data_ptr()
    # Stored once: no layer's range holds a second copy.
    assert store.buffer.numel() == table.total_bytes


def test_layer_views_shapes_dtypes_and_values() -> None:
    model, _, _, table, store = _packed("tiny-gpt2")
    modules = dict(model.module.named_modules())
    for layer in table:
        views = store.layer_views(layer)
        assert set(views) == {t.attr for t in layer.tensors}
        module = modules[layer.name]
        for t in layer.tensors:
            view = views[t.attr]
            assert tuple(view.shape) == t.shape and view.dtype == t.dtype
            owned = (module._parameters if t.is_parameter else module._buffers)[t.attr]
            assert view.data_ptr() == owned.data_ptr()  # the module reads the store in place
            start, end = store.layer_range(layer.index)
            assert start + t.offset == view.data_ptr() - store.buffer.data_ptr()
            assert start <= start + t.offset < start + t.offset + t.nbytes <= end


def test_layer_range_and_bytes_follow_the_table() -> None:
    _, _, _, table, store = _packed("tiny-resnet")
    for layer in table:
        start, end = store.layer_range(layer.index)
        assert start == table.offsets[layer.index] and end - start == layer.nbytes
        chunk = store.layer_bytes(layer.index)
        assert chunk.numel() == layer.nbytes and chunk.data_ptr() == store.buffer.data_ptr() + start


def test_layer_views_over_another_base() -> None:
    _, _, _, table, store = _packed("tiny-bert")
    layer = table.layers[1]
    copy = store.layer_bytes(layer.index).clone()
    views = store.layer_views(layer, copy)
    for attr, original in store.layer_views(layer).items():
        assert torch.equal(views[attr], original)
        assert views[attr].data_ptr() != original.data_ptr()


def test_bind_host_restores_host_views() -> None:
    model, inputs, before, _, store = _packed("tiny-gpt2")
    # Point every weight somewhere else (as an engine's device binding does)...
    for module in model.module.modules():
        for attr, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[attr] = torch.zeros_like(p)
    with torch.inference_mode():
        assert not torch.equal(model.module(**inputs), before)
    # ...and back.
    store.bind_host(model.module)
    with torch.inference_mode():
        assert torch.equal(model.module(**inputs), before)
    for t in (*model.module.parameters(), *model.module.buffers()):
        assert _inside(t, store.buffer)
    inner = model.module.inner
    assert inner.lm_head.weight.data_ptr() == inner.transformer.wte.weight.data_ptr()


def test_dha_base_on_cpu_is_the_buffer() -> None:
    _, _, _, _, store = _packed("tiny-bert")
    assert store.dha_base(torch.device("cpu")) is store.buffer


def test_constructor_refuses_wrong_buffers() -> None:
    _, _, _, table, _ = _packed("tiny-bert")
    with pytest.raises(ValueError, match="uint8"):
        HostStore(table, torch.empty(table.total_bytes, dtype=torch.float32))
    with pytest.raises(ValueError, match="whole packed layout"):
        HostStore(table, torch.empty(table.total_bytes - 1, dtype=torch.uint8))
