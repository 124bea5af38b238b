"""Front end <-> engine host frames: round trips, and malformed or hostile messages refused before allocation."""

from __future__ import annotations

import json
import socket
import struct

import numpy as np
import pytest

from deepplan_backend.hosting.wire import MAX_HEADER_BYTES, WireError, recv_message, send_message


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


def test_object_arrays_are_not_sent(pair):
    with pytest.raises(ValueError, match="cannot be sent"):
        send_message(pair[0], {}, [np.array(["x"], dtype=object)])


def _raw(sock: socket.socket, header: dict, payload: bytes = b"") -> None:
    head = json.dumps(header).encode()
    sock.sendall(struct.pack("!I", len(head)) + head + payload)


@pytest.mark.parametrize(
    "header, needle",
    [
        ({"arrays": [{"dtype": "object", "shape": [1]}]}, "not allowed"),
        ({"arrays": [{"dtype": "float32", "shape": [-1]}]}, "negative"),
        ({"arrays": [{"dtype": "float32", "shape": [1 << 20, 1 << 20]}]}, "exceeds"),
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
    a.sendall(struct.pack("!I", MAX_HEADER_BYTES + 1))
    with pytest.raises(WireError, match="exceeds"):
        recv_message(b)


def test_closed_connection_mid_message(pair):
    a, b = pair
    _raw(a, {"arrays": [{"dtype": "int64", "shape": [4]}]}, payload=b"\0" * 8)  # 8 of 32 bytes
    a.close()
    with pytest.raises(WireError, match="closed"):
        recv_message(b)
