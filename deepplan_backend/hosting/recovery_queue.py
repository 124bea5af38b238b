"""The order in which a replacement engine host registers its dead predecessor's models again.

After a death every model of the host registers at once, each front end with requests on the way. Set up side
by side, their CPU work (a module clone, a plan read, tens of ms each alone) shares one GIL, so all of them came
back together, at the end (session 14, 1 x H100: a 1.7 s median set-up and a 2.3 s outage). One at a time, the
first comes back after its own set-up (session 16: the outage fell from 1.27 to 0.69-1.03 s). Which one comes
first then matters: a model with a request waiting goes before those without. Its front end says so with a
``hurry`` message behind its registration (`host_client`), so the waiting registration's socket has bytes to
read; whoever ends a turn picks the next registration, preferring such a socket, else the oldest.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator


class _Waiter:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.go = threading.Event()


class RecoveryQueue:
    """Registrations one at a time; a registration with a request waiting (readable socket) goes first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._waiting: list[_Waiter] = []

    @contextlib.contextmanager
    def turn(self, conn: socket.socket) -> Iterator[float]:
        """Wait for the turn of the registration on `conn`; yields the ms it waited, and passes the turn on after."""
        start = time.perf_counter()
        waiter = _Waiter(conn)
        with self._lock:
            if self._busy:
                self._waiting.append(waiter)
            else:
                self._busy = True
                waiter.go.set()
        waiter.go.wait()
        try:
            yield (time.perf_counter() - start) * 1e3
        finally:
            self._pass_on()

    def _pass_on(self) -> None:
        with self._lock:
            if not self._waiting:
                self._busy = False
                return
            chosen = self._next()
            self._waiting.remove(chosen)
        chosen.go.set()  # one thread woken, not every waiter

    def _next(self) -> _Waiter:
        """The oldest waiter with a readable socket (a request waits behind it, or its front end left), else the oldest.

        `poll`, not `select`: an engine host of a few hundred models has file descriptors past 1023.
        """
        poller = select.poll()
        for waiter in self._waiting:
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile: its registration fails on its own
                poller.register(waiter.conn.fileno(), select.POLLIN)
        ready = {fd for fd, _ in poller.poll(0)}
        for waiter in self._waiting:
            with contextlib.suppress(OSError, ValueError):
                if waiter.conn.fileno() in ready:
                    return waiter
        return self._waiting[0]
