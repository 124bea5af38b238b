"""Front end <-> engine host frames: round trips, and malformed or hostile messages refused before allocation."""

from __future__ import annotations

import json
import socket
import struct

import numpy as np
import pytest

from deepplan_backend.hosting.wire import (
    ALIGN,
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    WireError,
    recv_message,
    send_message,
)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_round_trip_keeps_header_dtypes_shapes_and_values(pair):
    a, b = pair
    arrays = [
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)[:, ::2],  # not contiguous: sent contiguous
        np.zeros((0, 5), dtype=np.float16),
        np.array([True, False]),
    ]
    send_message(a, {"op": "answer", "requests": [["input_ids"]]}, arrays)
    header, got = recv_message(b)
    assert header == {"op": "answer", "requests": [["input_ids"]]}
    assert [g.dtype for g in got] == [x.dtype for x in arrays]
    for g, x in zip(got, arrays, strict=True):
        np.testing.assert_array_equal(g, x)
    assert got[0].flags.writeable  # torch.from_numpy takes it without a warning


def test_every_array_is_aligned_for_its_dtype(pair):
    """The arrays are views of one buffer: a header or an array of odd length must not misalign the next one."""
    a, b = pair
    arrays = [np.array([True, False, True]), np.arange(3, dtype=np.float32), np.arange(5, dtype=np.int64)]
    send_message(a, {"op": "answer", "odd": "x" * 37}, arrays)
    _, got = recv_message(b)
    for g, x in zip(got, arrays, strict=True):
        assert g.flags.aligned and g.ctypes.data % 16 == 0, g.dtype
        np.testing.assert_array_equal(g, x)


def test_an_unaligned_header_is_refused(pair):
    a, b = pair
    head = b'{"arrays":[]}'
    a.sendall(struct.pack("!IQ", len(head), 0) + head)
    with pytest.raises(WireError, match="aligned header"):
        recv_message(b)


def test_object_arrays_are_not_sent(pair):
    with pytest.raises(ValueError, match="cannot be sent"):
        send_message(pair[0], {}, [np.array(["x"], dtype=object)])


def _raw(sock: socket.socket, header: dict, payload: bytes = b"", declared: int | None = None) -> None:
    """A frame as a peer could write it: `declared` array bytes (default: the payload's length)."""
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % ALIGN)
    sock.sendall(struct.pack("!IQ", len(head), len(payload) if declared is None else declared) + head + payload)


@pytest.mark.parametrize(
    "header, needle",
    [
        ({"arrays": [{"dtype": "object", "shape": [1]}]}, "not allowed"),
        ({"arrays": [{"dtype": "float32", "shape": [-1]}]}, "negative"),
        ({"arrays": [{"dtype": "float32", "shape": [1 << 20, 1 << 20]}]}, "need 4398046511104 bytes"),
        ({"arrays": [{"shape": [1]}]}, "malformed"),
    ],
)
def test_malformed_headers_are_refused(pair, header, needle):
    a, b = pair
    _raw(a, header)
    with pytest.raises(WireError, match=needle):
        recv_message(b)


def test_huge_header_length_is_refused_before_reading(pair):
    a, b = pair
    a.sendall(struct.pack("!IQ", MAX_HEADER_BYTES + 1, 0))
    with pytest.raises(WireError, match="exceeds"):
        recv_message(b)


def test_huge_payload_length_is_refused_before_reading(pair):
    a, b = pair
    a.sendall(struct.pack("!IQ", 2, MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(WireError, match="payload .* exceeds"):
        recv_message(b)


def test_arrays_must_fill_the_payload_exactly(pair):
    a, b = pair
    _raw(a, {"arrays": [{"dtype": "int64", "shape": [2]}]}, payload=b"\0" * 24)  # one 64-byte slot needed
    with pytest.raises(WireError, match="need 64 bytes .* carries 24"):
        recv_message(b)


class _CountingSocket:
    """A socket whose sendmsg calls are counted (a socket's own methods cannot be replaced)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls: list[int] = []

    def sendmsg(self, parts) -> int:
        self.calls.append(len(parts))
        return self.sock.sendmsg(parts)


def test_one_message_is_one_sendmsg(pair):
    """Every socket call gives the GIL up and takes it back: a message goes out in one call."""
    a, b = pair
    counting = _CountingSocket(a)
    send_message(counting, {"op": "answer"}, [np.ones((1, 128), np.int64), np.ones(3, np.float32)])  # type: ignore[arg-type]
    assert counting.calls == [4]  # header, the ids, the float32 array and its padding
    header, got = recv_message(b)
    assert header == {"op": "answer"} and [g.shape for g in got] == [(1, 128), (3,)]


def test_a_large_message_survives_partial_sends(pair):
    """A socket buffer smaller than the message: sendmsg takes part of it at a time."""
    import threading

    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.settimeout(10.0)  # as the front end's sockets: each sendmsg then sends what fits and returns
    counting = _CountingSocket(a)
    image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)  # 602 KB
    sender = threading.Thread(target=send_message, args=(counting, {"op": "answer"}, [np.arange(5), image]))
    sender.start()
    header, got = recv_message(b)
    sender.join()
    assert len(counting.calls) > 1 and counting.calls[-1] <= 2  # resumed inside the image (then its padding)
    np.testing.assert_array_equal(got[0], np.arange(5))
    np.testing.assert_array_equal(got[1], image)


def test_closed_connection_mid_message(pair):
    a, b = pair
    _raw(a, {"arrays": [{"dtype": "int64", "shape": [4]}]}, payload=b"\0" * 8, declared=32)  # 8 of 32 bytes
    a.close()
    with pytest.raises(WireError, match="closed"):
        recv_message(b)
