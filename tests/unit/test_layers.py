"""The layer table (`runtime/layers.py`): execution order, shared tensors, packing offsets, fingerprint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepplan_backend.runtime.layers import ALIGNMENT, align, build_layer_table
from deepplan_backend.runtime.prepared import prepare
from deepplan_backend.runtime.zoo import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Reversed(nn.Module):
    """Submodules registered in the reverse of their call order; one called twice, one never called."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.head = nn.Linear(width, 2)  # registered first, runs last
        self.unused = nn.Linear(3, 3)  # never runs
        self.body = nn.Linear(width, width)  # runs twice
        self.norm = nn.BatchNorm1d(width)  # owns buffers too
        self.stem = nn.Linear(3, width)  # registered last, runs first
        self.scale = nn.Parameter(torch.ones(1))  # owned by the root itself

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.stem(x)
        if bias is not None:
            h = h + bias
        h = self.norm(self.body(h))
        h = self.body(h)
        return self.head(h) * self.scale


class Tied(nn.Module):
    """The decoder reuses the embedding's weight (as GPT-2's LM head does) and is registered before it."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(8, 50, bias=False)
        self.embed = nn.Embedding(50, 8)
        self.decoder.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.embed(ids))


def _reversed_table(width: int = 4):
    module = Reversed(width).eval()
    return module, build_layer_table(module, {"x": torch.randn(2, 3), "bias": torch.zeros(width)})


def test_execution_order_not_registration_order() -> None:
    module, table = _reversed_table()
    registered = [n for n, m in module.named_modules() if list(m.parameters(recurse=False))]
    assert registered == ["", "head", "unused", "body", "norm", "stem"]
    # The root's own pre-hook fires first; unobserved modules go before everything.
    assert [layer.name for layer in table] == ["unused", "", "stem", "body", "norm", "head"]
    assert [layer.index for layer in table] == list(range(len(table)))


def test_module_called_twice_appears_once() -> None:
    _, table = _reversed_table()
    assert [layer.name for layer in table].count("body") == 1


def test_unobserved_modules_go_first_and_are_marked() -> None:
    _, table = _reversed_table()
    assert [(layer.name, layer.observed) for layer in table][:2] == [("unused", False), ("", True)]
    assert all(layer.observed for layer in table.layers[1:])


def test_buffers_and_parameters_are_both_owned() -> None:
    module, table = _reversed_table()
    norm = next(layer for layer in table if layer.name == "norm")
    kinds = {t.attr: t.is_parameter for t in norm.tensors}
    assert kinds == {
        "weight": True,
        "bias": True,
        "running_mean": False,
        "running_var": False,
        "num_batches_tracked": False,
    }
    total = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    assert sum(t.nbytes for layer in table for t in layer.tensors) == total


def test_trace_leaves_module_without_hooks() -> None:
    module, _ = _reversed_table()
    assert all(not m._forward_pre_hooks for m in module.modules())


def test_tied_weight_is_stored_once_and_owner_runs_first() -> None:
    module = Tied()
    table = build_layer_table(module, {"ids": torch.tensor([[1, 2, 3]])})
    assert [layer.name for layer in table] == ["embed", "decoder"]
    embed, decoder = table.layers
    assert [t.attr for t in embed.tensors] == ["weight"]
    assert decoder.tensors == () and decoder.nbytes == 0
    (shared,) = decoder.shared
    assert (shared.attr, shared.owner_layer, shared.owner_attr, shared.is_parameter) == ("weight", 0, "weight", True)
    assert decoder.depends_on == (1, 0)
    assert embed.depends_on == (0,)
    assert table.total_bytes == align(50 * 8 * 4)


def test_tiny_gpt2_lm_head_shares_wte() -> None:
    model = load_model("tiny-gpt2")
    table = build_layer_table(model.module, model.example_inputs(1, 8))
    by_name = {layer.name: layer for layer in table}
    wte = by_name["inner.transformer.wte"]
    head = by_name["inner.lm_head"]
    assert wte.index < head.index
    assert head.tensors == () and head.nbytes == 0
    assert [(s.attr, s.owner_layer, s.owner_attr) for s in head.shared] == [("weight", wte.index, "weight")]
    assert wte.index in head.depends_on and head.index in head.depends_on
    # Stored once: the packed total counts every distinct tensor once.
    unique = {id(t): t for t in (*model.module.parameters(), *model.module.buffers())}
    assert table.total_bytes == sum(align(t.numel() * t.element_size()) for t in unique.values())
    assert all(layer.observed for layer in table)


def test_offsets_are_aligned_and_contiguous() -> None:
    for name in ("tiny-gpt2", "tiny-resnet"):
        table = prepare(name).table
        assert ALIGNMENT == 256
        assert table.offsets[0] == 0
        for layer, offset in zip(table.layers, table.offsets, strict=True):
            assert offset % ALIGNMENT == 0
            assert layer.nbytes % ALIGNMENT == 0
            for t in layer.tensors:
                assert t.offset % ALIGNMENT == 0
                assert t.nbytes == torch.Size(t.shape).numel() * torch.empty((), dtype=t.dtype).element_size()
                assert t.offset + t.nbytes <= layer.nbytes
        for k in range(len(table) - 1):
            assert table.offsets[k + 1] == table.offsets[k] + table.layers[k].nbytes
        assert table.total_bytes == table.offsets[-1] + table.layers[-1].nbytes == sum(table.nbytes)


def test_tensors_within_a_layer_do_not_overlap() -> None:
    table = prepare("tiny-bert").table
    for layer in table:
        spans = sorted((t.offset, t.offset + t.nbytes) for t in layer.tensors)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end <= start


def test_align() -> None:
    assert [align(n) for n in (0, 1, 255, 256, 257, 512)] == [0, 256, 256, 256, 512, 512]


def test_fingerprint_is_stable_across_builds_and_seeds() -> None:
    a = prepare("tiny-bert", seed=0)
    b = prepare("tiny-bert", seed=0)
    c = prepare("tiny-bert", seed=1)  # other weight values, same structure
    assert a.fingerprint == b.fingerprint == c.fingerprint
    assert len(a.fingerprint) == 16
    assert a.table.fingerprint("bert") == a.fingerprint


def test_fingerprint_changes_with_shape_dtype_and_family() -> None:
    _, small = _reversed_table(4)
    _, wide = _reversed_table(5)
    assert small.fingerprint("x") == _reversed_table(4)[1].fingerprint("x")
    assert small.fingerprint("x") != wide.fingerprint("x")
    assert small.fingerprint("x") != small.fingerprint("y")
    assert prepare("tiny-bert").fingerprint != prepare("tiny-bert", dtype="fp16").fingerprint
    assert prepare("tiny-bert").fingerprint != prepare("tiny-roberta").fingerprint


def test_zoo_models_trace_every_layer_except_none() -> None:
    """In the zoo's tiny models every tensor-owning module runs on the trace input."""
    for name in ("tiny-bert", "tiny-roberta", "tiny-resnet"):
        table = prepare(name).table
        assert all(layer.observed for layer in table), name
        assert len({layer.name for layer in table}) == len(table)
