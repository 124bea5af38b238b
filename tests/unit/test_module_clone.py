"""`clone_sharing_tensors`: what identical served instances share (tensors) and what each owns (modules)."""

from __future__ import annotations

import gc
import weakref

import torch
from torch import nn

from deepplan_backend.runtime.prepared import clone_sharing_tensors, prepare_shared, release_shared
from deepplan_backend.runtime.zoo import load_model


def test_a_clone_owns_its_modules_and_shares_its_tensors() -> None:
    module = load_model("tiny-gpt2").module.eval()  # tied input and output embeddings: one tensor at two places
    clone = clone_sharing_tensors(module)
    pairs = list(zip(module.modules(), clone.modules(), strict=True))
    assert all(a is not b and type(a) is type(b) for a, b in pairs)
    named = dict(module.named_parameters(remove_duplicate=False))
    assert all(t is named[n] for n, t in clone.named_parameters(remove_duplicate=False))
    assert all(t is dict(module.named_buffers())[n] for n, t in clone.named_buffers())
    ids = torch.arange(12)[None]
    with torch.inference_mode():
        torch.testing.assert_close(clone(input_ids=ids), module(input_ids=ids), rtol=0, atol=0)


def test_rebinding_or_retraining_a_clone_leaves_the_original_alone() -> None:
    shared = nn.Linear(4, 4)
    root = nn.Sequential(shared, nn.ReLU(), shared)  # one module at two places
    clone = clone_sharing_tensors(root)
    assert clone[0] is clone[2] and clone[0] is not shared, "a module reachable twice stays one in the copy"
    fresh = torch.zeros(4, 4)
    clone[0]._parameters["weight"] = fresh  # what an engine does when it binds device bytes
    assert clone[2].weight is fresh and shared.weight is not fresh
    clone.eval()
    assert root.training and shared.training
    clone[1].register_forward_hook(lambda *_: None)
    assert not root[1]._forward_hooks, "hooks are the clone's own"


def test_shared_instances_get_their_own_module_over_one_host_copy() -> None:
    first, second = prepare_shared("tiny-bert"), prepare_shared("tiny-bert")
    try:
        assert first.store is second.store and first.model.module is not second.model.module
        for a, b in zip(first.model.module.parameters(), second.model.module.parameters(), strict=True):
            assert a is b
    finally:
        release_shared("tiny-bert")
        release_shared("tiny-bert")


def test_a_clone_is_freed_by_its_last_reference_without_a_collection() -> None:
    root = load_model("tiny-bert").module
    gc.disable()  # a cycle would wait for a collection, and forever once frozen (`gc_pauses`)
    try:
        clone = clone_sharing_tensors(root)
        refs = [weakref.ref(m) for m in clone.modules()]
        del clone
        assert not any(ref() is not None for ref in refs)
    finally:
        gc.enable()
