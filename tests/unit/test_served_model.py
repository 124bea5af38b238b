"""ServedModel's device runner: only the device part of a request goes through it (an engine host's device
thread); validation and waiting for budget stay on the caller's thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from deepplan_backend.runtime.served_model import ServedModel, ServeSettings


def test_device_work_goes_through_the_runner_and_nothing_else(tmp_path: Path) -> None:
    calls: list[str] = []

    def runner(fn):
        calls.append(threading.current_thread().name)
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", fn()), name="device")
        t.start()
        t.join()
        return box["r"]

    settings = ServeSettings.from_parameters(
        {"model": "tiny-bert", "engine": "pipeline", "plan_repository": str(tmp_path / "plans"),
         "residency_dir": str(tmp_path / "state"), "budget": "64MiB"}
    )  # fmt: skip
    served = ServedModel(settings, "m#1", 4, device_runner=runner)
    try:
        x = np.random.default_rng(0).integers(0, 1000, (1, 8), dtype=np.int64)
        answers = served.answer([{"input_ids": x}, {"input_ids": x[:, :0]}, {"input_ids": x}])
        assert answers[1].invalid and answers[0].cold and answers[2].cold  # one batch of the two valid ones
        np.testing.assert_array_equal(answers[0].output, answers[2].output)
        assert calls == [threading.current_thread().name]  # one device call for the batch; invalid never got there
        warm = served.answer([{"input_ids": x}])[0]
        assert not warm.cold and len(calls) == 2
    finally:
        served.close()
