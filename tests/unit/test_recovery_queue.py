"""The replacement host's registration queue: one at a time, a registration whose socket has a request waiting
behind it first, else the oldest."""

from __future__ import annotations

import socket
import threading
import time

from deepplan_backend.hosting.recovery_queue import RecoveryQueue


def _wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_turns_go_one_at_a_time_hurried_first_then_oldest() -> None:
    queue = RecoveryQueue()
    pairs = {name: socket.socketpair() for name in "abcd"}
    order: list[str] = []
    inside = threading.Semaphore(0)
    release = {name: threading.Event() for name in "abcd"}
    overlap: list[str] = []
    active: set[str] = set()

    def register(name: str) -> None:
        with queue.turn(pairs[name][0]) as waited_ms:
            assert waited_ms >= 0
            if active:
                overlap.append(name)
            active.add(name)
            order.append(name)
            inside.release()
            release[name].wait(5)
            active.discard(name)

    threads = {name: threading.Thread(target=register, args=(name,)) for name in "abcd"}
    threads["a"].start()
    assert inside.acquire(timeout=5)  # a holds the turn
    for name in "bcd":  # queued in this order
        threads[name].start()
        _wait_until(lambda n=name: len(queue._waiting) == "bcd".index(n) + 1)
    pairs["d"][1].sendall(b"hurry")  # d's front end: a request waits behind its registration
    for name in ("a", "d", "b", "c"):
        release[name].set()
        if name != "c":
            assert inside.acquire(timeout=5)
    for t in threads.values():
        t.join(5)
    assert order == ["a", "d", "b", "c"] and overlap == []
    for left, right in pairs.values():
        left.close()
        right.close()


def test_a_closed_socket_in_the_queue_still_gets_its_turn_and_passes_it_on() -> None:
    queue = RecoveryQueue()
    left, right = socket.socketpair()
    holder_in, holder_out = threading.Event(), threading.Event()

    def hold() -> None:
        with queue.turn(left):
            holder_in.set()
            holder_out.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holder_in.wait(5)
    gone, peer = socket.socketpair()
    turns: list[float] = []

    def register_gone() -> None:
        with queue.turn(gone) as waited_ms:
            turns.append(waited_ms)

    waiter = threading.Thread(target=register_gone)
    waiter.start()
    _wait_until(lambda: len(queue._waiting) == 1)
    gone.close()  # its front end left while it waited (fileno -1): the pick must not fail on it
    holder_out.set()
    holder.join(5)
    waiter.join(5)
    assert len(turns) == 1 and turns[0] > 0
    started = time.perf_counter()
    with queue.turn(right) as waited_ms:  # the queue is free again: no wait
        assert waited_ms < 50 and time.perf_counter() - started < 1
    for s in (left, right, peer):
        s.close()
