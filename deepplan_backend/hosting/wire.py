"""Messages between a model's Triton front end and its engine host: a JSON header plus raw NumPy arrays.

A message on the (Unix stream) socket is::

    u32 header length | u64 array bytes | header (UTF-8 JSON) | arrays

The header's ``"arrays"`` lists ``{"dtype", "shape"}`` for the arrays that follow, in order. The header (padded
with spaces) and each array (padded with zeros) fill whole `ALIGN`-byte slots, so that every array, a view of the
one buffer the message is read into, starts aligned for its dtype, as PyTorch and vector loads expect. No pickle: the
host only ever builds arrays of the whitelisted dtypes below from bytes, so a confused or hostile peer can
cause an error, never code execution. Sizes are checked before anything is allocated.

A message leaves in one ``sendmsg`` and arrives in two reads (the lengths, then the rest), because every socket
call releases the GIL and must take it back: in an engine host whose device thread holds the GIL, each extra
call can wait for it. With a thread spinning in Python on the answering side, a front-end round trip took p90
10.6-11.1 ms this way against 15.9-18.8 ms with a call per part; without that thread, 0.2-0.3 ms either way
(2-core CPU host, three runs, `results/logs/s15/cpu_wire_ab/`).
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
_PREFIX = struct.Struct("!IQ")  # header length, array bytes
ALIGN = 64
"""Every array starts at a multiple of this from the start of the header (a cache line; any dtype's alignment)."""
_ZEROS = bytes(ALIGN)
_IOV_MAX = 1024  # buffers one sendmsg takes on Linux (a batch of many requests sends in several calls)


def _slot(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


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
    head += b" " * (_slot(len(head)) - len(head))  # JSON allows trailing spaces
    if len(head) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    payload = sum(_slot(a.nbytes) for a in contiguous)
    parts: list[bytes | memoryview] = [_PREFIX.pack(len(head), payload) + head]
    for a in contiguous:
        if a.nbytes:
            parts.append(a.data.cast("B"))  # the array's own memory, not a copy (a 600 KB image is sent as it is)
            if _slot(a.nbytes) > a.nbytes:
                parts.append(_ZEROS[: _slot(a.nbytes) - a.nbytes])
    _send_parts(sock, parts)


def _send_parts(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """``sendmsg`` until every part is sent (a stream socket may take only some of it)."""
    pending = [memoryview(p) for p in parts]
    while pending:
        sent = sock.sendmsg(pending[:_IOV_MAX])
        while pending and sent >= len(pending[0]):
            sent -= len(pending[0])
            pending.pop(0)
        if sent:
            pending[0] = pending[0][sent:]


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Receive one message; WireError on a closed connection or a malformed message."""
    size, payload = _PREFIX.unpack(_recv_exact(sock, _PREFIX.size))
    if size > MAX_HEADER_BYTES:
        raise WireError(f"header of {size} bytes exceeds {MAX_HEADER_BYTES}")
    if payload > MAX_PAYLOAD_BYTES:
        raise WireError(f"payload of {payload} bytes exceeds {MAX_PAYLOAD_BYTES}")
    body = _recv_exact(sock, size + payload)
    try:
        header = json.loads(body[:size])
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
        total += _slot(dtype.itemsize * math.prod(shape))
    if size % ALIGN or total != payload:
        raise WireError(
            f"the arrays need {total} bytes after a {ALIGN}-byte aligned header, the message carries "
            f"{payload} after {size}"
        )
    arrays = []
    offset = size
    for dtype, shape in specs:
        count = math.prod(shape)
        try:  # a view of the message's buffer: writable, no copy
            arrays.append(np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape))
        except ValueError as exc:  # e.g. more dimensions than NumPy allows
            raise WireError(f"malformed array {list(shape)}: {exc}") from None
        offset += _slot(dtype.itemsize * count)
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
