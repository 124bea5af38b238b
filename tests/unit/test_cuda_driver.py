"""Driver-call results: values out, failures as the caller's exception naming the call and the driver's error."""

from __future__ import annotations

import pytest

from deepplan_backend.runtime import cuda_driver

pytestmark = pytest.mark.skipif(not cuda_driver.available(), reason="cuda-bindings not installed")


def test_a_successful_call_gives_its_value_or_values() -> None:
    ok = cuda_driver.driver().CUresult.CUDA_SUCCESS
    assert cuda_driver.check((ok, 5), "cuThing") == 5
    assert cuda_driver.check((ok, 1, 2), "cuThing") == [1, 2]


def test_a_failed_call_raises_the_callers_error_with_both_names() -> None:
    oom = cuda_driver.driver().CUresult.CUDA_ERROR_OUT_OF_MEMORY
    with pytest.raises(MemoryError, match=r"cuMemCreate\(64 bytes\) failed: CUDA_ERROR_OUT_OF_MEMORY"):
        cuda_driver.check((oom,), "cuMemCreate(64 bytes)", MemoryError)
    with pytest.raises(RuntimeError, match="CUDA_ERROR_OUT_OF_MEMORY"):
        cuda_driver.check(oom, "cuMemMap")  # a call that returns the bare CUresult
