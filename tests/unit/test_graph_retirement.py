"""`graphs.retire`: a closed engine's graphs and chunk events stay alive, bounded (see its docstring for why)."""

from __future__ import annotations

import collections

import torch

from deepplan_backend.runtime import graphs
from deepplan_backend.runtime.graphs import CapturedForward


def _captured(tag: str) -> CapturedForward:
    # No CUDA here: retirement only holds references, so any object stands for the graph.
    return CapturedForward(graph=tag, inputs={}, output=torch.zeros(1))  # type: ignore[arg-type]


def test_retire_keeps_graphs_and_events_skips_missing_captures_and_drops_the_oldest(monkeypatch) -> None:
    monkeypatch.setattr(graphs, "_retired", collections.deque(maxlen=4))
    cold, warm = _captured("cold"), _captured("warm")
    events = ["event-a", "event-b"]
    graphs.retire([cold, None, warm], events)  # type: ignore[arg-type]
    assert list(graphs._retired) == [cold, warm, events]
    graphs.retire([], None)  # an eager engine: nothing to keep
    assert len(graphs._retired) == 3
    later = [_captured(f"g{i}") for i in range(3)]
    graphs.retire(later, None)
    assert list(graphs._retired) == [warm, events, *later][-4:]  # the oldest made room


def test_cpu_engine_close_retires_nothing() -> None:
    from deepplan_backend.runtime.engine import ColdStartEngine
    from deepplan_backend.runtime.plan import LoadSchedule
    from deepplan_backend.runtime.prepared import prepare

    prepared = prepare("tiny-bert")
    before = len(graphs._retired)
    engine = ColdStartEngine(prepared.model, prepared.store, [torch.device("cpu")], graphs=True)
    engine.infer(prepared.model.example_inputs(1, 4), LoadSchedule.all_on_target(len(prepared.table)))
    engine.close()
    assert len(graphs._retired) == before  # graphs are a CUDA-only regime
