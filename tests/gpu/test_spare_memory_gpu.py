"""Evicted device memory taken over by the cold start that evicted it (`runtime/spare_memory`), on a real GPU.

Models of one process with room for one at a time, as an engine host serves them: every request is a cold start
that evicts the previous model. With the same arena size the victim's allocation is reused (no release, no new
allocation); with another size it is released first. Answers stay equal to the plain model's, and the device's
used memory does not grow over the cycles.
"""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import pytest
import torch

from deepplan_backend.runtime import spare_memory
from tests.gpu.engine_checks import reference_output

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CYCLES = 3


def _load(
    tmp_path, names: list[str], monkeypatch, engine: str = "deepplan"
) -> tuple[list, concurrent.futures.ThreadPoolExecutor]:
    """One `ServedModel` per name on GPU 0 with `engine`, sharing one device thread, with room for the largest alone."""
    from deepplan_backend.runtime import served_model
    from deepplan_backend.runtime.serve_settings import ServeSettings
    from deepplan_backend.runtime.served_model import ServedModel

    monkeypatch.setattr(served_model, "_WARMED", set())
    monkeypatch.setenv("DEEPPLAN_ALLOWED_ROOTS", f"{tmp_path / 'plans'}:{tmp_path / 'state'}:{tmp_path / 'probe'}")

    def settings(model: str, state: str, budget: str) -> ServeSettings:
        return ServeSettings.from_parameters(
            {"model": model, "engine": engine, "devices": "0", "plan_repository": str(tmp_path / "plans"),
             "residency_dir": str(tmp_path / state), "budget": budget},
            model_dir=tmp_path,
        )  # fmt: skip

    needs = []
    for i, name in enumerate(sorted(set(names))):
        probe = ServedModel(settings(name, "probe", "1GiB"), f"probe{i}#0", 1)
        needs.append(probe.need_bytes)
        probe.close()
    budget = f"{max(needs) + min(needs) // 2}B"  # room for one model at a time
    device = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    lock = threading.Lock()
    models = [
        ServedModel(
            settings(name, "state", budget),
            f"{name}-{i}#0",
            1,
            exec_lock=lock,
            device_runner=lambda fn: device.submit(fn).result(),
        )  # fmt: skip
        for i, name in enumerate(names)
    ]
    return models, device


def _cycle(models: list) -> list[int]:
    """CYCLES rounds of one request per model, each checked against the plain model; device bytes used per round."""
    used = []
    for _ in range(CYCLES):
        for m in models:
            example = m.model.example_inputs(1, m.settings.seq_len, seed=11)
            answer = m.answer([{k: v.numpy() for k, v in example.items()}])[0]
            assert answer.error is None and answer.cold, m.key
            expected = reference_output(m.model.name, "float32", example)
            torch.testing.assert_close(torch.from_numpy(np.asarray(answer.output)), expected, rtol=1e-4, atol=1e-4)
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info(0)
        used.append(total - free)
    return used


@pytest.mark.parametrize("reuse", [True, False])
def test_same_size_victims_hand_their_memory_to_the_cold_start(tmp_path, monkeypatch, reuse: bool) -> None:
    monkeypatch.setenv(spare_memory.REUSE_ENV, "1" if reuse else "0")
    models, device = _load(tmp_path, ["tiny-bert"] * 3, monkeypatch)
    try:
        before = spare_memory.taken_total()
        used = _cycle(models)
        taken = spare_memory.taken_total() - before
        # Every cold start but the first evicts its predecessor, of the same size.
        assert taken == (3 * CYCLES - 1 if reuse else 0)
        assert max(used) - min(used) < 64 << 20, used  # nothing kept beyond a request
        assert sum(m.engine.is_resident for m in models) == 1
    finally:
        for m in models:
            m.close()
        device.shutdown()


def test_other_size_victims_are_released_first(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(spare_memory.REUSE_ENV, "1")
    # The tiny models all round up to one 2 MiB allocation: ResNet-50's is another size.
    models, device = _load(tmp_path, ["tiny-bert", "resnet50"], monkeypatch, engine="pipeline")
    try:
        before = spare_memory.taken_total()
        used = _cycle(models)
        assert spare_memory.taken_total() == before
        assert max(used) - min(used) < 64 << 20, used
    finally:
        for m in models:
            m.close()
        device.shutdown()
