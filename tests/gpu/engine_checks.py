"""What the GPU tests of the engine paths share: the plain model's output, a schedule per path, a cold+warm check."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmark.measure import plain_model_output
from deepplan_backend.runtime.engine import ColdStartEngine
from deepplan_backend.runtime.plan import DHA, LoadSchedule
from deepplan_backend.runtime.schedules import even_split


def reference_output(name: str, dtype: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plain `transformers` model's output on GPU 0, as the Fig. 10 table computes it."""
    return plain_model_output(name, dtype, torch.device("cuda:0"), inputs)


def schedules_by_mode(n: int, nbytes: tuple[int, ...]) -> dict[str, tuple[LoadSchedule, bool]]:
    """A schedule per engine path this machine can run (name -> (schedule, overlap)), for `n` layers of `nbytes`."""
    every_third_dha = LoadSchedule(tuple(DHA if i % 3 == 0 else 0 for i in range(n)), 1)
    found = {
        "demand": (LoadSchedule.all_on_target(n), False),
        "pipeline": (LoadSchedule.all_on_target(n), True),
        "dha": (every_third_dha, True),
        "all-dha": (LoadSchedule((DHA,) * n, 1), True),
    }
    if torch.cuda.device_count() >= 2:
        found["pt2"] = (even_split(nbytes, 2), True)
        dha_pt = list(even_split(nbytes, 2).sources)
        for i in range(0, n, 4):
            dha_pt[i] = DHA
        found["dha+pt2"] = (LoadSchedule(tuple(dha_pt), 2), True)
    if torch.cuda.device_count() >= 4:
        # Three peer lanes at once, one of them left without layers (the planner may choose that).
        pt4 = list(even_split(nbytes, 3).sources)
        for i in range(0, n, 5):
            pt4[i] = DHA
        pt4 = [3 if s == 2 else s for s in pt4]
        found["dha+pt4"] = (LoadSchedule(tuple(pt4), 4), True)
    return found


def cold_then_warm(
    engine: ColdStartEngine,
    inputs: dict[str, torch.Tensor],
    schedule: LoadSchedule,
    overlap: bool,
    expected: torch.Tensor,
    label: str,
    before_each: Callable[[], object] = lambda: None,
) -> None:
    """A cold request, then a warm one: each is what it should be and equals the plain model."""
    before_each()
    cold = engine.infer(inputs, schedule, overlap)
    before_each()
    warm = engine.infer(inputs, schedule, overlap)
    assert cold.cold and not warm.cold
    torch.testing.assert_close(cold.output, expected, rtol=1e-4, atol=1e-4, msg=f"{label}: cold")
    torch.testing.assert_close(warm.output, expected, rtol=1e-4, atol=1e-4, msg=f"{label}: warm")
