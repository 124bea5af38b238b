"""NumPy <-> DLPack capsules (the front end's tensor exchange), checked against torch's DLPack as the peer."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

from deepplan_backend.dlpack import DLPackError, array_from_capsule, capsule_from_array, live_exports


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32, np.float16, np.uint8, np.bool_])
def test_export_is_read_by_torch_and_released(dtype) -> None:
    a = (np.arange(24).reshape(2, 3, 4) % 2).astype(dtype)
    before = live_exports()
    t = from_dlpack(capsule_from_array(a[:, ::2]))  # not contiguous: exported as a compact copy
    np.testing.assert_array_equal(t.numpy(), a[:, ::2])
    assert live_exports() == before + 1
    del t
    gc.collect()
    assert live_exports() == before, "the consumer's deleter released the array"


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.float16, torch.bool])
def test_import_copies_a_torch_capsule(dtype) -> None:
    t = (torch.arange(12).reshape(3, 4) % 3).to(dtype)
    a = array_from_capsule(to_dlpack(t))
    np.testing.assert_array_equal(a, t.numpy())
    t.zero_()
    assert a.any(), "a copy, not a view of the producer's memory"


def test_scalar_and_empty_tensors() -> None:
    np.testing.assert_array_equal(array_from_capsule(to_dlpack(torch.tensor(3.5))), np.array(3.5, np.float32))
    assert array_from_capsule(to_dlpack(torch.zeros(0, 5))).shape == (0, 5)
    assert from_dlpack(capsule_from_array(np.zeros((0, 2), np.float32))).shape == (0, 2)


def test_strided_and_unsupported_inputs_are_refused() -> None:
    with pytest.raises(DLPackError, match="non-contiguous"):
        array_from_capsule(to_dlpack(torch.arange(12).reshape(3, 4).t()))
    with pytest.raises(DLPackError, match="dtype"):
        array_from_capsule(to_dlpack(torch.zeros(2, dtype=torch.complex64)))
    with pytest.raises(DLPackError, match="cannot be exported"):
        capsule_from_array(np.array(["a"], dtype=object))
