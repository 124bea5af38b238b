"""Exact-size pinned buffers on a GPU: page-locked at their size (not PyTorch's next power of two), copied from
asynchronously, read in place by kernels (DHA), and unregistered when the last view is gone."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest
import torch

from deepplan_backend.runtime.pinned_memory import clear_runtime_error, cuda_register, exact_pinned_empty

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

_NOT_REGISTERED = 713  # cudaErrorHostMemoryNotRegistered


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_pinned_at_its_size_and_unregistered_after_the_last_view() -> None:
    nbytes = int(417.6 * 2**20)  # BERT-Large-sized: PyTorch's allocator would pin 512 MiB
    torch.cuda.init()
    before = _rss_bytes()
    host = exact_pinned_empty(nbytes)
    grown = _rss_bytes() - before
    report = {"nbytes": nbytes, "rss_growth": grown, "is_pinned": bool(host.is_pinned())}
    folder = os.environ.get("DEEPPLAN_GPU_REPORT_DIR")
    if folder:
        with open(Path(folder) / "pinned_memory_gpu.jsonl", "a") as f:
            f.write(json.dumps(report) + "\n")
    assert nbytes <= grown < nbytes + 32 * 2**20, report  # registration faulted in exactly the buffer's pages

    host.copy_(torch.arange(nbytes, dtype=torch.int64).remainder_(251).to(torch.uint8))
    device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    device.copy_(host, non_blocking=True)  # an async copy needs page-locked memory to stay async and correct
    torch.cuda.synchronize()
    assert torch.equal(device.cpu(), host)

    class _Pointer:  # DHA: under UVA, a mapped, registered host address is also a device address
        __cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (host.data_ptr(), False),
            "version": 3,
        }

    dha = torch.as_tensor(_Pointer(), device="cuda")
    assert int(dha[-4096:].to(torch.int64).sum()) == int(host[-4096:].to(torch.int64).sum())

    address = host.data_ptr()
    del dha, device, host
    gc.collect()
    torch.cuda.synchronize()
    assert int(torch.cuda.cudart().cudaHostUnregister(address)) == _NOT_REGISTERED  # already undone
    # PyTorch leaves that error as the thread's last one, and its next kernel launch check would raise it.
    assert clear_runtime_error()
    assert not clear_runtime_error()  # taken once
    assert int((torch.ones(4, device="cuda") + 1).sum()) == 8


def test_a_refused_registration_leaves_no_error_behind() -> None:
    """A refused registration (here: one already made) raises OSError, and the next kernel of the thread runs."""
    host = exact_pinned_empty(1 << 20)
    with pytest.raises(OSError, match="cudaHostRegister"):
        cuda_register(host.data_ptr(), 1 << 20)
    assert int((torch.ones(4, device="cuda") + 1).sum()) == 8
