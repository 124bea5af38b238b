"""Residency across real processes: shared budget, LRU eviction through listeners, dead owners reclaimed."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import time
from pathlib import Path

import pytest

from deepplan_backend.runtime.residency import BudgetBusy, DoesNotFit, Residency

CTX = mp.get_context("spawn")
MB = 1 << 20


def owner(state_dir: str, keys: list[str], nbytes: int, budget: int, cmds, events) -> None:
    """A process owning models: obeys (op, key) commands, reports evictions and results on `events`."""
    res = Residency(state_dir)
    resident: dict[str, bool] = {}

    def evicter(k: str):
        def evict() -> None:
            resident[k] = False
            events.put(("evicted", k, os.getpid()))

        return evict

    for k in keys:
        res.register(k, "dev0", budget, evicter(k))
        resident[k] = False
    events.put(("ready", os.getpid()))
    while True:
        op, key = cmds.get()
        if op == "stop":
            return
        try:
            grant = res.acquire(key, nbytes, timeout_s=10)
            resident[key] = True
            if op == "hold":  # stay in use until told
                events.put(("holding", key, grant.warm))
                cmds.get()
            events.put(("ran", key))  # still in use: an eviction of `key` can only be reported after this
            res.release(key, nbytes)
            events.put(("done", key, grant.warm))
        except Exception as exc:
            events.put(("error", key, f"{type(exc).__name__}: {exc}"))


def expect(events, kind: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ev = events.get(timeout=max(0.1, deadline - time.monotonic()))
        if ev[0] == kind:
            return ev, seen
        seen.append(ev)
    raise AssertionError(f"no {kind} event; saw {seen}")


@pytest.fixture
def procs(tmp_path):
    started = []

    def start(keys, nbytes=40 * MB, budget=100 * MB):
        cmds, events = CTX.Queue(), CTX.Queue()
        p = CTX.Process(target=owner, args=(str(tmp_path), keys, nbytes, budget, cmds, events), daemon=True)
        p.start()
        expect(events, "ready")
        started.append(p)
        return p, cmds, events

    yield start
    for p in started:
        if p.is_alive():
            p.kill()
        p.join(5)


def run(cmds, events, key):
    cmds.put(("run", key))
    ev, seen = expect(events, "done")
    assert ev[1] == key, (ev, seen)
    return ev[2], seen


def test_lru_eviction_across_processes(tmp_path, procs):
    _, ca, ea = procs(["a1", "a2"])
    _, cb, eb = procs(["b1"])
    assert run(ca, ea, "a1")[0] is False  # cold
    assert run(ca, ea, "a2")[0] is False
    assert run(ca, ea, "a1")[0] is True  # warm; now a2 is least recently used
    warm, _ = run(cb, eb, "b1")  # 3 x 40 MB > 100 MB: evicts a2 (LRU), not a1
    assert warm is False
    ev, _ = expect(ea, "evicted")
    assert ev[1] == "a2"
    snap = Residency(tmp_path).snapshot()
    assert {k for k, e in snap["models"].items() if e["resident"]} == {"a1", "b1"}
    assert sum(e["bytes"] for e in snap["models"].values()) <= 100 * MB
    assert run(ca, ea, "a1")[0] is True
    assert run(ca, ea, "a2")[0] is False  # cold again; evicts b1 (LRU now)
    ev, _ = expect(eb, "evicted")
    assert ev[1] == "b1"


def test_in_use_model_is_never_evicted_and_waiter_is_woken(tmp_path, procs):
    _, ca, ea = procs(["a1"], nbytes=60 * MB)
    _, cb, eb = procs(["b1"], nbytes=60 * MB)
    ca.put(("hold", "a1"))
    expect(ea, "holding")
    cb.put(("run", "b1"))  # must wait: a1 is in use
    time.sleep(1.0)
    assert eb.empty()
    t0 = time.monotonic()
    ca.put(("go", ""))  # a1 releases -> b1 is woken, evicts a1 (idle now), runs
    _, before_done = expect(ea, "done")
    ev, _ = expect(eb, "done")
    assert time.monotonic() - t0 < 3.0
    # a's listener thread reports the eviction, racing a's main thread's "done": either may come first.
    evicted = [e for e in before_done if e[0] == "evicted"] or [expect(ea, "evicted")[0]]
    assert evicted[0][1] == "a1"


def test_model_larger_than_budget_is_a_clear_error(tmp_path, procs):
    _, ca, ea = procs(["big"], nbytes=150 * MB)
    ca.put(("run", "big"))
    ev, _ = expect(ea, "error")
    assert "DoesNotFit" in ev[2] and "budget" in ev[2]
    assert issubclass(DoesNotFit, Exception)


def test_dead_owner_leaks_no_budget(tmp_path, procs):
    pa, ca, ea = procs(["a1", "a2"], nbytes=50 * MB)
    run(ca, ea, "a1")
    run(ca, ea, "a2")
    os.kill(pa.pid, signal.SIGKILL)
    pa.join(5)
    _, cb, eb = procs(["b1", "b2"], nbytes=50 * MB)
    assert run(cb, eb, "b1")[0] is False
    assert run(cb, eb, "b2")[0] is False
    snap = Residency(tmp_path).snapshot()
    assert set(snap["models"]) == {"b1", "b2"}


def test_a_dead_owner_seen_alive_moments_ago_is_reclaimed_within_the_liveness_ttl(tmp_path, procs):
    from deepplan_backend.runtime.residency import ALIVE_TTL_S

    pa, ca, ea = procs(["a1"], nbytes=50 * MB)
    run(ca, ea, "a1")
    watcher = Residency(tmp_path)
    assert set(watcher.snapshot()["models"]) == {"a1"}  # checked alive: trusted for ALIVE_TTL_S
    os.kill(pa.pid, signal.SIGKILL)
    pa.join(5)
    time.sleep(ALIVE_TTL_S)
    assert watcher.snapshot()["models"] == {}


def test_budget_busy_times_out(tmp_path):
    res = Residency(tmp_path)
    res.register("x", "dev0", 10, lambda: None)
    res.register("y", "dev0", 10, lambda: None)
    res.acquire("x", 8)
    with pytest.raises(BudgetBusy):
        res.acquire("y", 8, timeout_s=0.5)
    res.release("x", 8)
    grant = res.acquire("y", 8, timeout_s=2)  # same process: x evicted through the own listener
    assert not grant.warm and grant.evicted == ("x",)


def test_concurrent_owners_lose_no_update(tmp_path, procs):
    """Two processes taking turns as fast as they can: every write of one must be seen by the other (each
    process caches the state it last wrote and re-parses only when the file changed)."""
    owners = [procs([f"{p}{i}" for i in range(3)]) for p in "ab"]
    rounds = 25
    for i in range(rounds):
        for (_, cmds, _), p in zip(owners, "ab", strict=True):
            cmds.put(("run", f"{p}{(i * 2) % 3}"))
    resident: dict[str, bool] = {}  # from each owner's own events, in order: ran -> resident, evicted -> not
    done = dict.fromkeys("ab", 0)
    while min(done.values()) < rounds:  # both finished: no eviction is reported after this but the queued ones
        for (_, _, events), p in zip(owners, "ab", strict=True):
            with contextlib.suppress(queue.Empty):
                ev = events.get(timeout=0.05)
                assert ev[0] != "error", ev
                if ev[0] == "ran":
                    resident[ev[1]] = True
                elif ev[0] == "evicted":
                    resident[ev[1]] = False
                done[p] += ev[0] == "done"
    for _, _, events in owners:
        with contextlib.suppress(queue.Empty):
            while True:
                ev = events.get(timeout=0.5)
                if ev[0] == "evicted":
                    resident[ev[1]] = False
    snap = Residency(tmp_path).snapshot()
    assert sorted(snap["models"]) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert not any(e["in_use"] for e in snap["models"].values())
    assert sum(resident.values()) <= 2, resident  # 2 x 40 MB fit the 100 MB budget, 3 do not
    assert {k for k, v in resident.items() if v} == {k for k, e in snap["models"].items() if e["resident"]}


def test_a_failed_state_write_is_not_saved_later(tmp_path, monkeypatch):
    """A write that fails (e.g. /dev/shm full) fails its call and leaves the file as it was; the changed state
    must not survive in this process's cache and be written by the next, unrelated call."""
    from deepplan_backend.runtime import residency as residency_module

    res = Residency(tmp_path)
    res.register("a", "dev0", 100 * MB, lambda: None)

    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(residency_module.os, "replace", full)
        with pytest.raises(OSError):
            res.acquire("a", 40 * MB)
    assert res.budget("dev0") == 100 * MB  # an unrelated call that writes nothing new
    entry = res.snapshot()["models"]["a"]
    assert (entry["in_use"], entry["bytes"]) == (False, 0)
    res.acquire("a", 40 * MB)  # and the residency still works
    res.release("a", 40 * MB)
    assert res.snapshot()["models"]["a"]["resident"]


def test_a_victim_of_the_same_process_is_evicted_by_a_direct_call_and_recorded_at_once(tmp_path):
    import threading

    r = Residency(tmp_path)
    threads: list[str] = []
    r.register("a", "cuda:0", 100, lambda: threads.append(threading.current_thread().name))
    r.register("b", "cuda:0", 100, lambda: None)
    r.acquire("a", 80)
    r.release("a", 80)
    grant = r.acquire("b", 60)
    assert grant.evicted == ("a",) and threads == [threading.current_thread().name]  # not the listener thread
    models = r.snapshot()["models"]
    assert (models["a"]["bytes"], models["a"]["resident"], models["a"]["evicting"]) == (0, False, 0)
    assert (models["b"]["bytes"], models["b"]["in_use"]) == (60, True)
    r.release("b", 60)


def test_a_grant_says_how_long_its_evictions_took(tmp_path) -> None:
    r = Residency(tmp_path)
    r.register("a", "cuda:0", 100, lambda: time.sleep(0.03))  # a victim whose device memory takes 30 ms to free
    r.register("b", "cuda:0", 100, lambda: None)
    assert r.acquire("a", 80).evict_ms == 0.0  # room to spare: nothing evicted
    r.release("a", 80)
    started = time.perf_counter()
    grant = r.acquire("b", 60)
    total_ms = (time.perf_counter() - started) * 1e3
    assert grant.evicted == ("a",) and 30.0 <= grant.evict_ms <= total_ms
    r.release("b", 60)


def test_benchmarks_scratch_state_lives_with_the_servers_and_goes_away() -> None:
    from deepplan_backend.runtime.residency import scratch_state_dir, server_state_dir, state_base

    assert server_state_dir(123).parent == state_base()
    with scratch_state_dir("deepplan-test-") as folder:
        assert Path(folder).parent == state_base() and Path(folder).is_dir()  # /dev/shm where there is one
        Residency(Path(folder) / "residency").register("a", "cpu", 100, lambda: None)
    assert not Path(folder).exists()


def test_an_unused_residency_folder_is_removed_and_a_used_one_kept(tmp_path) -> None:
    import subprocess
    import sys

    from deepplan_backend.runtime.residency import _encode, remove_unused_state_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for owner, kept in ((int(dead.stdout), False), (os.getpid(), True)):
        folder = tmp_path / f"state-{owner}"
        folder.mkdir()
        (folder / "cuda%3A0.lock").touch()
        (folder / "cuda%3A0.state").write_bytes(_encode({"models": {"m#1": {"pid": int(dead.stdout)}}}))
        (folder / "cuda%3A1.state").write_bytes(_encode({"models": {"m#2": {"pid": owner}}}))  # any device counts
        assert remove_unused_state_dir(folder) is not kept
        assert folder.exists() is kept
    assert remove_unused_state_dir(tmp_path / "never-made")  # nothing there: nothing to keep


def test_a_damaged_state_file_reads_as_empty_and_is_rewritten(tmp_path) -> None:
    from deepplan_backend.runtime.residency import _decode

    assert _decode(b"") == {} and _decode(b"\x00garbage") == {} and _decode(b"i\x01\x00\x00\x00") == {}
    r = Residency(tmp_path)
    (tmp_path / "cpu.state").write_bytes(b"not a state")
    r.register("a", "cpu", 100, lambda: None)  # the next locked use starts from an empty state
    assert set(r.snapshot()["models"]) == {"a"} and r.budget("cpu") == 100


def test_a_device_whose_lock_is_held_holds_up_no_other_device(tmp_path) -> None:
    """A process stopped while it holds one device's lock (killed while its core is written, or under a debugger)
    must not stop the other devices' cold starts: session 11 saw one host death freeze all four GPUs for 12 s."""
    import subprocess
    import sys
    import threading

    from deepplan_backend.runtime.residency import device_file_stem

    r = Residency(tmp_path)
    r.register("a", "cuda:0", 100, lambda: None)
    r.register("b", "cuda:1", 100, lambda: None)
    lock = tmp_path / f"{device_file_stem('cuda:0')}.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(3)", str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        blocked = threading.Thread(target=lambda: (r.acquire("a", 60), r.release("a", 60)), daemon=True)
        blocked.start()
        started = time.monotonic()
        for _ in range(3):  # cold, then warm, on the other device
            r.acquire("b", 60)
            r.release("b", 60)
        assert time.monotonic() - started < 1.0
        assert blocked.is_alive()  # cuda:0 itself waits for its lock, as it must
    finally:
        holder.kill()
        holder.wait()
    blocked.join(5)
    assert not blocked.is_alive()  # the lock came back with the holder's death: cuda:0 went on
    assert r.snapshot()["models"]["a"]["resident"]


def test_each_device_has_its_own_budget_file_and_a_snapshot_merges_them(tmp_path) -> None:
    from deepplan_backend.runtime.residency import STATE_SUFFIX

    r = Residency(tmp_path)
    r.register("a", "cuda:0", 100, lambda: None)
    r.register("b", "cuda:1", 50, lambda: None)
    r.acquire("a", 80)
    r.release("a", 80)
    r.acquire("b", 50)  # room on cuda:1 alone: a, on cuda:0, is not a victim
    r.release("b", 50)
    assert sorted(p.name for p in tmp_path.glob(f"*{STATE_SUFFIX}")) == ["cuda%3A0.state", "cuda%3A1.state"]
    assert r.devices() == ["cuda:0", "cuda:1"]
    snap = r.snapshot()
    assert snap["budgets"] == {"cuda:0": 100, "cuda:1": 50}
    assert {k: (e["device"], e["resident"]) for k, e in snap["models"].items()} == {
        "a": ("cuda:0", True),
        "b": ("cuda:1", True),
    }
    assert (r.used("cuda:0"), r.used("cuda:1")) == (80, 50)
    r.register("b", "cuda:0", 100, lambda: None)  # registered again elsewhere: it leaves cuda:1
    assert r.used("cuda:1") == 0 and set(r.device_snapshot("cuda:1")["models"]) == set()
    r.unregister("b")
    r.unregister("b")  # twice: nothing left to forget
    r.release("b", 10)  # a late release of an unregistered model counts nothing
    assert set(r.snapshot()["models"]) == {"a"}
