"""Messages between a model's Triton front end and its engine host: a JSON header plus raw NumPy arrays.

A message on the (Unix stream) socket is::

    u32 header length | header (UTF-8 JSON) | array bytes, back to back

The header's ``"arrays"`` lists ``{"dtype", "shape"}`` for the arrays that follow, in order. No pickle: the
host only ever builds arrays of the whitelisted dtypes below from bytes, so a confused or hostile peer can
cause an error, never code execution. Sizes are checked before anything is allocated.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 31
"""Largest array payload of one message (2 GiB): far above any batch the models accept."""
DTYPES = frozenset({"bool", "int8", "uint8", "int32", "int64", "float16", "float32", "float64"})
_LEN = struct.Struct("!I")


class WireError(ConnectionError):
    """The peer closed the connection or sent something that is not a message."""


def send_message(sock: socket.socket, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> None:
    """Send `header` and `arrays` (any layout; sent C-contiguous) as one message."""
    contiguous = [np.ascontiguousarray(a) for a in arrays]
    for a in contiguous:
        if a.dtype.name not in DTYPES:  # the caller's mistake, not a broken connection
            raise ValueError(f"dtype {a.dtype} cannot be sent (allowed: {', '.join(sorted(DTYPES))})")
    meta = [{"dtype": a.dtype.name, "shape": list(a.shape)} for a in contiguous]
    head = json.dumps({**header, "arrays": meta}, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    sock.sendall(_LEN.pack(len(head)) + head)
    for a in contiguous:
        if a.nbytes:
            sock.sendall(a.data.cast("B"))  # the array's own memory: no copy of a 600 KB image


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Receive one message; WireError on a closed connection or a malformed message."""
    (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if size > MAX_HEADER_BYTES:
        raise WireError(f"header of {size} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_recv_exact(sock, size))
        metas = header.pop("arrays", [])
        specs = [(np.dtype(_dtype(m["dtype"])), tuple(int(d) for d in m["shape"])) for m in metas]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WireError(f"malformed header: {exc}") from None
    if not isinstance(header, dict):
        raise WireError("malformed header: not an object")
    total = 0
    for dtype, shape in specs:
        if any(d < 0 for d in shape):
            raise WireError(f"negative dimension in {list(shape)}")
        total += dtype.itemsize * math.prod(shape)
    if total > MAX_PAYLOAD_BYTES:
        raise WireError(f"payload of {total} bytes exceeds {MAX_PAYLOAD_BYTES}")
    arrays = []
    for dtype, shape in specs:
        data = _recv_exact(sock, dtype.itemsize * math.prod(shape))
        try:
            arrays.append(np.frombuffer(data, dtype=dtype).reshape(shape))
        except ValueError as exc:  # e.g. more dimensions than NumPy allows
            raise WireError(f"malformed array {list(shape)}: {exc}") from None
    return header, arrays


def _dtype(name: object) -> str:
    if not isinstance(name, str) or name not in DTYPES:
        raise ValueError(f"dtype {name!r} not allowed")
    return name


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise WireError("connection closed by the peer")
        got += k
    return buf
