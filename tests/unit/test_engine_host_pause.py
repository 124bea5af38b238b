"""The engine host's pause between a reply and its warm budget release (`engine_host._readable_within`)."""

from __future__ import annotations

import socket
import time

from deepplan_backend.hosting.engine_host import _readable_within


def test_engine_host_pause_before_the_release_ends_early_for_a_message_or_a_close() -> None:
    """The host waits up to `SETTLE_PAUSE_S` after a reply before its warm release, unless the front end speaks."""
    host, front = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with host, front:
        start = time.perf_counter()
        assert not _readable_within(host, 0.02)  # nothing came: the release runs after the pause
        assert time.perf_counter() - start >= 0.015
        front.sendall(b"x")
        assert _readable_within(host, 5.0)  # the next request goes first
        host.recv(1)
        front.close()
        assert _readable_within(host, 5.0)  # a departed front end: no release to wait for
    assert _readable_within(host, 0.0)  # closed on this side too
