"""`benchmark.measure` on the CPU: interleaved samples, output checks against the first configuration, and the
flags that keep a table honest (graph replay, a reference that overflows)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.coldstart_limit import _notes
from benchmark.measure import Run, measure_interleaved, plain_model_output
from deepplan_backend.runtime.plan import LinkProfile
from deepplan_backend.runtime.prepared import prepare

CPU = torch.device("cpu")
LINKS = LinkProfile(h2d_gbps=10.0, p2p_gbps=10.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_configuration_matches_the_first_and_is_not_a_graph_on_cpu() -> None:
    prepared = prepare("tiny-bert")
    runs = [Run("demand", (CPU,), LINKS), Run("pipeline", (CPU,), LINKS, graphs=True)]
    results = measure_interleaved(prepared, runs, None, repeats=2, warmup=1)
    assert [r.engine for r in results] == ["demand", "pipeline"]
    for r in results:
        assert r.samples == 2 and r.cold_ms > 0 and r.max_abs_diff <= 1e-6
        assert r.reference_finite and not r.graph_replayed  # graphs are ignored on the CPU


def test_a_reference_that_overflows_is_reported_not_judged() -> None:
    prepared = prepare("tiny-bert")
    layer = next(layer for layer in prepared.table if layer.name.endswith("word_embeddings"))
    start, end = prepared.store.layer_range(layer.index)
    prepared.store.buffer[start:end].view(torch.float32).fill_(float("inf"))  # every output becomes NaN
    results = measure_interleaved(prepared, [Run("demand", (CPU,), LINKS)], None, repeats=1, warmup=0)
    assert not results[0].reference_finite and math.isnan(results[0].max_abs_diff)
    assert "NOT CHECKED" in _notes(None, math.nan, "float16", True)
    assert "WRONG OUTPUT" in _notes(False, 0.5, "float16", True) and "GRAPH" in _notes(True, 0.0, "float32", False)


def test_distance_from_the_plain_model_is_measured_and_shows_a_wrong_reference() -> None:
    prepared = prepare("tiny-bert")
    inputs = prepared.model.example_inputs(1)
    plain = plain_model_output("tiny-bert", "float32", CPU, inputs)
    runs = [Run("demand", (CPU,), LINKS), Run("pipeline", (CPU,), LINKS)]
    results = measure_interleaved(prepared, runs, None, repeats=1, warmup=0, plain_output=plain)
    assert all(r.plain_max_abs_diff is not None and r.plain_max_abs_diff <= 1e-5 for r in results)
    shifted = measure_interleaved(prepared, runs[:1], None, repeats=1, warmup=0, plain_output=plain + 0.5)
    assert shifted[0].plain_max_abs_diff == pytest.approx(0.5, abs=1e-4)
    assert measure_interleaved(prepared, runs[:1], None, repeats=1, warmup=0)[0].plain_max_abs_diff is None
