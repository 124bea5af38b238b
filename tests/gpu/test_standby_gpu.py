"""The standby engine host on a GPU: cold, it holds no CUDA context while it waits; primed (the default), it holds one
on its host's GPU; once woken it serves right either way.

Skipped without CUDA; run on the device machine (`pytest tests/gpu`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.measure import plain_model_output
from deepplan_backend.hosting import standby
from deepplan_backend.hosting.host_client import HostedModel, listener_pid
from deepplan_backend.runtime.residency import STATE_DIR_ENV

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _gpu_files(pid: int) -> set[str]:
    """The GPU device files `pid` has open (``/dev/nvidia0`` ...): a CUDA context on a GPU opens its file."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if re.fullmatch(r"/dev/nvidia\d+", target):
            found.add(target)
    return found


def _wait_for(what, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while not (value := what()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


@pytest.mark.parametrize("mode", ["cold", "primed"])
def test_standby_holds_a_gpu_only_if_primed_and_once_woken_serves_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv(standby.STANDBY_ENV, mode)
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "residency"))
    monkeypatch.setenv("DEEPPLAN_ALLOWED_ROOTS", f"{tmp_path / 'plans'}:{tmp_path / 'residency'}")
    (tmp_path / "repo" / "1").mkdir(parents=True)
    params = {"model": "tiny-bert", "engine": "pipeline", "devices": "0", "plan_repository": str(tmp_path / "plans"),
              "budget": "256MiB"}  # fmt: skip
    x = np.random.default_rng(5).integers(0, 1000, (1, 12), dtype=np.int64)
    want = plain_model_output("tiny-bert", "float32", torch.device("cuda:0"), {"input_ids": torch.from_numpy(x)})
    model = HostedModel(params, tmp_path / "repo", "s_0_0", 1, None)
    try:
        (first,) = model.answer([{"input_ids": x}])
        assert first.error is None and first.cold, first.error
        host = model.info["pid"]
        free_before, _ = torch.cuda.mem_get_info(0)  # the standby is still importing (seconds): no context yet
        spare = _wait_for(lambda: listener_pid(standby.control_path(model.path)))
        assert spare not in (None, host)
        # Its preload is done once PyTorch's CUDA library is mapped; it must still hold no GPU.
        assert _wait_for(lambda: "libtorch_cuda" in Path(f"/proc/{spare}/maps").read_text())
        assert _gpu_files(host), "the host's CUDA context opens its GPU's device file"
        if mode == "cold":
            time.sleep(1.0)
            assert not _gpu_files(spare), "a cold standby holds no CUDA context (no GPU memory) while it waits"
        else:
            primed = _wait_for(lambda: _gpu_files(spare))
            assert primed == _gpu_files(host), "primed on its host's GPU, and only there"
            time.sleep(2.0)  # the context is open; its first kernels follow
            cost_mib = (free_before - torch.cuda.mem_get_info(0)[0]) / 2**20
            if os.environ.get("DEEPPLAN_GPU_REPORT_DIR"):  # scripts/device_suite.sh keeps it with the call's logs
                with open(Path(os.environ["DEEPPLAN_GPU_REPORT_DIR"]) / "standby_gpu.jsonl", "a") as f:
                    f.write(json.dumps({"primed_standby_gpu_mib": round(cost_mib, 1)}) + "\n")
            assert standby.PRIME_FLAG in Path(f"/proc/{spare}/cmdline").read_text().split("\0")

        os.kill(host, signal.SIGKILL)
        # Warm or cold: the new host's deferred warm-up of the model may have it on the device just now.
        (again,) = model.answer([{"input_ids": x}])
        assert again.error is None, again.error
        assert model.info["pid"] == spare, "the standby replaced the lost host"
        torch.testing.assert_close(torch.from_numpy(again.output), want.cpu(), rtol=1e-4, atol=1e-4)
        assert _gpu_files(spare), "woken, it serves on the GPU"
    finally:
        model.close()
