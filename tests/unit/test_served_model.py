"""ServedModel's device runner: the device part of a request — taking budget, then the forward — goes through it
(an engine host's device thread); validation and batching stay on the caller's thread."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepplan_backend.runtime import served_model
from deepplan_backend.runtime.answer import PHASES
from deepplan_backend.runtime.serve_settings import ServeSettings
from deepplan_backend.runtime.served_model import ServedModel


def test_device_work_goes_through_the_runner_and_nothing_else(tmp_path: Path) -> None:
    calls: list[str] = []

    def runner(fn):
        calls.append(threading.current_thread().name)
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", fn()), name="device")
        t.start()
        t.join()
        return box["r"]

    served = ServedModel(_settings(tmp_path, "64MiB"), "m#1", 4, device_runner=runner)
    calls.clear()  # the load's warm-up, if this process had not warmed up a tiny-bert yet
    try:
        x = np.random.default_rng(0).integers(0, 1000, (1, 8), dtype=np.int64)
        answers = served.answer([{"input_ids": x}, {"input_ids": x[:, :0]}, {"input_ids": x}])
        assert answers[1].invalid and answers[0].cold and answers[2].cold  # one batch of the two valid ones
        np.testing.assert_array_equal(answers[0].output, answers[2].output)
        assert calls == [threading.current_thread().name]  # one device call for the batch; invalid never got there
        warm = served.answer([{"input_ids": x}])[0]
        assert not warm.cold and len(calls) == 2
        for answer in (answers[0], warm):  # where the time went, phase by phase (DEEPPLAN_TRACE prints it)
            assert set(answer.timing) == set(PHASES) and all(v >= 0 for v in answer.timing.values())
        assert answers[0].timing["engine_ms"] <= answers[0].provision_ms
    finally:
        served.close()


def _settings(tmp_path: Path, budget: str) -> ServeSettings:
    return ServeSettings.from_parameters(
        {"model": "tiny-bert", "engine": "pipeline", "plan_repository": str(tmp_path / "plans"),
         "residency_dir": str(tmp_path / "state"), "budget": budget}
    )  # fmt: skip


def test_a_request_queued_for_the_device_pins_no_budget(tmp_path: Path) -> None:
    """Under load, queued requests that reserved budget evicted every idle model: all requests went cold."""
    device = concurrent.futures.ThreadPoolExecutor(max_workers=1)  # an engine host's single device thread
    lock = threading.Lock()
    probe = ServedModel(_settings(tmp_path, "1GiB"), "probe#0", 1)
    need = probe.need_bytes
    probe.close()
    budget = f"{2 * need + need // 2}B"  # room for two models, not three
    models = {
        name: ServedModel(
            _settings(tmp_path, budget),
            f"{name}#0",
            1,
            exec_lock=lock,
            device_runner=lambda fn: device.submit(fn).result(),
        )
        for name in ("a", "b", "c")
    }
    x = np.random.default_rng(0).integers(0, 1000, (1, 8), dtype=np.int64)
    gate = threading.Event()
    try:
        for name in ("a", "b"):
            assert models[name].answer([{"input_ids": x}])[0].cold
        device.submit(gate.wait)  # the device is busy with another model's request
        client = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            queued = client.submit(models["c"].answer, [{"input_ids": x}])
            time.sleep(0.5)  # c's request waits in the device queue
            state = models["a"].residency.snapshot()["models"]
        finally:
            gate.set()
            client.shutdown()
        assert state["a#0"]["resident"] and state["b#0"]["resident"], "a queued request evicted a model"
        assert not state["c#0"]["in_use"] and state["c#0"]["bytes"] == 0, "a queued request holds budget"
        assert queued.result(timeout=60)[0].cold
        assert models["b"].answer([{"input_ids": x}])[0].cold is False  # c evicted the LRU model, a
        assert models["a"].answer([{"input_ids": x}])[0].cold
    finally:
        gate.set()
        for served in models.values():
            served.close()
        device.shutdown()


def test_the_first_model_of_a_kind_warms_up_at_load_and_leaves_the_device_empty(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(served_model, "_WARMED", set())
    threads: list[str] = []

    def runner(fn):
        threads.append(threading.current_thread().name)
        return fn()

    first = ServedModel(_settings(tmp_path, "64MiB"), "a#0", 1, device_runner=runner)
    second = ServedModel(_settings(tmp_path, "64MiB"), "b#0", 1, device_runner=runner)
    try:
        assert len(threads) == 3  # cold request, warm request, evict: all on the device runner; none for `second`
        entry = first.residency.snapshot()["models"]["a#0"]
        assert (entry["resident"], entry["bytes"], entry["in_use"]) == (False, 0, False)
        assert first.engine.resident_bytes == 0 and first.evictions == 0  # not an eviction to make room
        x = np.random.default_rng(1).integers(0, 1000, (1, 8), dtype=np.int64)
        assert first.answer([{"input_ids": x}])[0].cold  # the device was left empty
    finally:
        first.close()
        second.close()


def test_a_deferred_warm_up_runs_later_unless_a_request_came_first(tmp_path: Path, monkeypatch) -> None:
    """An engine host replacing a dead one registers models without their warm-up and runs it when idle."""
    monkeypatch.setattr(served_model, "_warms_per_model", lambda engine: True)  # as with graphs: one per model
    calls: list[str] = []

    def runner(fn):
        calls.append("device")
        return fn()

    idle = ServedModel(_settings(tmp_path, "64MiB"), "idle#0", 1, device_runner=runner, warm_up=False)
    asked = ServedModel(_settings(tmp_path, "64MiB"), "asked#0", 1, device_runner=runner, warm_up=False)
    try:
        assert calls == [] and "warm_up" not in idle.setup_ms  # registered, nothing on the device yet
        x = np.random.default_rng(2).integers(0, 1000, (1, 8), dtype=np.int64)
        assert asked.answer([{"input_ids": x}])[0].cold
        calls.clear()
        assert asked.warm_up_deferred() is False and calls == []  # its request paid the one-time costs
        assert idle.warm_up_deferred() is True and len(calls) == 3  # cold request, warm request, evict
        assert idle.engine.resident_bytes == 0 and idle.evictions == 0
        assert idle.warm_up_deferred() is False  # once
    finally:
        idle.close()
        asked.close()
    late = ServedModel(_settings(tmp_path, "64MiB"), "late#0", 1, device_runner=runner, warm_up=False)
    late.close()
    calls.clear()
    assert late.warm_up_deferred() is False and calls == []  # unloaded before its turn


def test_with_graphs_every_model_warms_up_at_load(tmp_path: Path, monkeypatch) -> None:
    """Graphs are captured at a model's first warm request: with them on, each model does that at load, not the
    first of a kind only. The CPU engine has no graphs, so the test says it has them to check the policy."""
    monkeypatch.setattr(served_model, "_WARMED", set())
    cpu = ServedModel(_settings(tmp_path, "64MiB"), "cpu#0", 1)
    assert not served_model._warms_per_model(cpu.engine)
    cpu.close()
    monkeypatch.setattr(served_model, "_warms_per_model", lambda engine: True)
    threads: list[str] = []

    def runner(fn):
        threads.append(threading.current_thread().name)
        return fn()

    models = [ServedModel(_settings(tmp_path, "64MiB"), f"{k}#0", 1, device_runner=runner) for k in "ab"]
    try:
        assert len(threads) == 6  # cold request, warm request, evict: for each model
        for m in models:
            entry = m.residency.snapshot()["models"][m.key]
            assert (entry["resident"], entry["bytes"], entry["in_use"]) == (False, 0, False)
            assert m.engine.resident_bytes == 0 and m.evictions == 0
    finally:
        for m in models:
            m.close()


def test_a_warm_up_keeps_its_model_from_eviction_between_its_two_requests(tmp_path: Path, monkeypatch) -> None:
    """Models load concurrently on one device thread: another model's request between a warm-up's cold and warm
    request must not evict it, or the warm one is a cold start again and the graphs are never captured (on
    4 x H100 the first warm requests under load then captured them: 38-56 ms)."""
    from deepplan_backend.runtime.residency import RoomBusy

    monkeypatch.setattr(served_model, "_WARMED", set())
    monkeypatch.setattr(served_model, "_warms_per_model", lambda engine: True)
    probe = ServedModel(_settings(tmp_path, "1GiB"), "probe#0", 1)
    need = probe.need_bytes
    probe.close()
    budget = f"{need + need // 2}B"  # room for one model
    other = ServedModel(_settings(tmp_path, budget), "b#0", 1)  # loaded, device empty again
    jobs: list[str] = []
    refused: list[str] = []

    def runner(fn):
        result = fn()
        jobs.append("job")
        if len(jobs) == 1:  # between the warm-up's cold and warm request, `b` needs the room
            try:
                other.residency.acquire(other.key, other.need_bytes, wait=False)
            except RoomBusy as exc:
                refused.append(str(exc))
        return result

    a = ServedModel(_settings(tmp_path, budget), "a#0", 1, device_runner=runner)
    try:
        assert refused, "b's request evicted the model mid-warm-up"
        assert a.evictions == 0 and len(jobs) == 3  # cold, warm, then the warm-up's own eviction
        entry = a.residency.snapshot()["models"]["a#0"]
        assert (entry["resident"], entry["in_use"]) == (False, False)  # and nothing left marked in use
        x = np.random.default_rng(2).integers(0, 1000, (1, 8), dtype=np.int64)
        assert other.answer([{"input_ids": x}])[0].cold  # the room is free for b now
    finally:
        a.close()
        other.close()


def test_waiting_for_room_held_elsewhere_leaves_the_device_thread_free(tmp_path: Path) -> None:
    """Room held by a request of another process: the model waits on its own thread, not on the device thread
    that every other model of its GPU needs."""
    from deepplan_backend.runtime.residency import Residency

    device = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    probe = ServedModel(_settings(tmp_path, "1GiB"), "probe#0", 1)
    need = probe.need_bytes
    probe.close()
    served = ServedModel(
        _settings(tmp_path, f"{need + need // 2}B"), "a#0", 1, device_runner=lambda fn: device.submit(fn).result()
    )
    other = Residency(tmp_path / "state")  # stands for a model of another process on the same device
    other.register("other#0", served.device_name, None, lambda: None)
    other.acquire("other#0", need)  # in use: a cannot have its room until this request ends
    x = np.random.default_rng(2).integers(0, 1000, (1, 8), dtype=np.int64)
    client = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        waiting = client.submit(served.answer, [{"input_ids": x}])
        time.sleep(0.5)
        assert not waiting.done()
        assert device.submit(lambda: "free").result(timeout=5) == "free"  # the device thread is not held
        other.release("other#0", 0)
        answer = waiting.result(timeout=30)[0]
        assert answer.error is None and answer.cold
    finally:
        other.release("other#0", 0)
        client.shutdown()
        served.close()
        other.unregister("other#0")
        device.shutdown()


def test_an_eviction_asked_during_a_warm_request_waits_for_it_and_the_budget_stays_exact(tmp_path: Path) -> None:
    """Warm requests take no budget first, so another model may pick a model mid-request as its victim: the
    eviction must wait for the request and its release, and the state must end with the victim's bytes freed."""
    probe = ServedModel(_settings(tmp_path, "1GiB"), "probe#0", 1)
    need = probe.need_bytes
    probe.close()
    settings = _settings(tmp_path, f"{need + need // 2}B")  # room for one of the two
    a = ServedModel(settings, "a#0", 1)
    b = ServedModel(settings, "b#0", 1)
    x = np.random.default_rng(3).integers(0, 1000, (1, 8), dtype=np.int64)
    slow_infer, in_request = a.engine.infer, threading.Event()

    def slow(*args, **kwargs):
        in_request.set()
        time.sleep(0.3)
        return slow_infer(*args, **kwargs)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    try:
        expected = a.answer([{"input_ids": x}])[0]  # cold: a is resident from here on
        a.engine.infer = slow  # type: ignore[method-assign]
        warm = pool.submit(a.answer, [{"input_ids": x}])
        assert in_request.wait(5)
        cold = pool.submit(b.answer, [{"input_ids": x}])  # needs a's room: a is the only victim
        answer_a, answer_b = warm.result(30)[0], cold.result(30)[0]
        assert not answer_a.cold and answer_b.cold and answer_a.error is None and answer_b.error is None
        np.testing.assert_array_equal(answer_a.output, expected.output)  # a ran warm: not evicted mid-request
        models = a.residency.snapshot()["models"]
        assert (models["a#0"]["resident"], models["a#0"]["bytes"]) == (False, 0) and a.engine.resident_bytes == 0
        assert (models["b#0"]["resident"], models["b#0"]["bytes"]) == (True, b.need_bytes)
        assert a.evictions == 1
    finally:
        pool.shutdown()
        a.close()
        b.close()


def test_a_deferred_release_waits_for_settle_cold_or_warm(tmp_path: Path) -> None:
    """An engine host answers first and releases after (`settle`). Until then a cold start's model counts as in use
    with its reservation; the release records its resident bytes and moves its LRU clock."""
    served = ServedModel(_settings(tmp_path, "64MiB"), "d#0", 1)
    x = np.random.default_rng(4).integers(0, 1000, (1, 8), dtype=np.int64)
    try:
        cold = served.answer([{"input_ids": x}], defer_release=True)[0]
        assert cold.cold and cold.timing["release_ms"] == 0.0
        entry = served.residency.snapshot()["models"]["d#0"]
        assert entry["in_use"] and entry["bytes"] == served.need_bytes  # still the reservation
        served.settle()
        entry = served.residency.snapshot()["models"]["d#0"]
        assert not entry["in_use"] and entry["resident"] and entry["bytes"] == served.engine.resident_bytes > 0
        clock = entry["last_used"]
        warm = served.answer([{"input_ids": x}], defer_release=True)[0]
        assert not warm.cold and warm.timing["release_ms"] == 0.0
        assert served.residency.snapshot()["models"]["d#0"]["last_used"] == clock  # not yet
        served.settle()
        entry = served.residency.snapshot()["models"]["d#0"]
        assert entry["last_used"] > clock and not entry["in_use"] and entry["bytes"] == served.engine.resident_bytes
        served.settle()  # nothing pending: no change
        again = served.answer([{"input_ids": x}])[0]  # without defer_release (process: instance): released at once
        assert not again.cold and not served.residency.snapshot()["models"]["d#0"]["in_use"]
    finally:
        served.close()


def test_text_validation_names_each_bad_input_and_passes_good_ones_through(tmp_path: Path) -> None:
    served = ServedModel(_settings(tmp_path, "64MiB"), "m#v", 4)
    try:
        ids = np.arange(8, dtype=np.int64)[None]
        mask = np.ones_like(ids)
        good = served.validate({"input_ids": ids, "attention_mask": mask})
        assert set(good) == {"input_ids", "attention_mask"}
        assert torch.equal(good["input_ids"], torch.from_numpy(ids)) and good["attention_mask"].dtype == torch.int64
        vocab = served.model.vocab_size
        bad = [
            ({"input_ids": ids - 1}, "token id -1 out of range"),
            ({"input_ids": ids + vocab}, f"token id {vocab + 7} out of range"),
            ({"input_ids": ids, "attention_mask": mask * 2}, "values must be 0 or 1"),
            ({"input_ids": ids, "attention_mask": -mask}, "values must be 0 or 1"),
            ({"input_ids": ids, "attention_mask": mask[:, :4]}, "differs from input_ids"),
            ({"input_ids": ids[:, :0]}, "empty sequence"),
            ({"input_ids": ids.astype(np.int32)}, "expected INT64"),
        ]
        for arrays, needle in bad:
            with pytest.raises(served_model.RequestError, match=needle):
                served.validate(arrays)
    finally:
        served.close()
