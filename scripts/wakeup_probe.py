"""Where does a request's hop between processes and threads go? Wake-up latency, measured on this machine.

    python3 scripts/wakeup_probe.py [--gap-ms 10] [--spin-us 0] [--cpu-dma-latency-us N] [--out FILE]

The Triton front end and the engine host exchange one message each way per request (`hosting/wire.py`), and the
host hands the device work to its device thread and back. On 4 x H200 hosts each direction of that hop took
0.3-0.5 ms for a 3 KB message (session 7's traces), far more than copying 3 KB costs. This probe times the same
wire between two processes, and a thread handoff, after an idle gap like a cold start's:

- ``up``: the sender's `send_message` to the receiver's parsed message (the receiver idle for ``--gap-ms``);
- ``down``: the same, back, to a sender that has been waiting since its own send;
- ``handoff``: `ThreadPoolExecutor.submit(...).result()` of an empty function (two wake-ups).

``--spin-us`` makes every waiting side poll for that long before it blocks (a hot receiver).
``--cpu-dma-latency-us`` holds a PM QoS request on ``/dev/cpu_dma_latency`` for the run (root only), which keeps
idle cores out of the deep C-states whose exit latency a sleeping receiver pays.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import select
import socket
import statistics
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deepplan_backend.hosting.wire import WireError, recv_message, send_message  # noqa: E402


def _await(sock: socket.socket, spin_s: float) -> None:
    """Poll `sock` for up to `spin_s` before the caller blocks in recv."""
    deadline = time.perf_counter() + spin_s
    while time.perf_counter() < deadline:
        if select.select([sock], [], [], 0)[0]:
            return


def _echo(sock: socket.socket, spin_s: float) -> None:
    """The receiving process: answer each message with its arrival time, arrays dropped."""
    while True:
        _await(sock, spin_s)
        try:
            header, _ = recv_message(sock)
        except WireError:
            return
        up_ms = (time.perf_counter() - header["sent_at"]) * 1e3
        send_message(sock, {"up_ms": up_ms, "sent_at": time.perf_counter()})


def wire_hop(nbytes: int, gap_s: float, spin_s: float, samples: int) -> dict[str, float]:
    """Median up / down / round-trip milliseconds of `samples` messages of `nbytes` between two processes."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        mine.close()
        _echo(theirs, spin_s)
        os._exit(0)
    theirs.close()
    payload = np.zeros(max(1, nbytes // 8), dtype=np.int64)
    ups, downs, trips = [], [], []
    for i in range(samples + 10):
        time.sleep(gap_s)
        start = time.perf_counter()
        send_message(mine, {"op": "answer", "sent_at": start}, [payload])
        _await(mine, spin_s)
        reply, _ = recv_message(mine)
        end = time.perf_counter()
        if i >= 10:  # the first messages pay page faults and imports
            ups.append(reply["up_ms"])
            downs.append((end - reply["sent_at"]) * 1e3)
            trips.append((end - start) * 1e3)
    mine.close()
    os.waitpid(pid, 0)
    return {"up_ms": statistics.median(ups), "down_ms": statistics.median(downs), "trip_ms": statistics.median(trips)}


def thread_handoff(gap_s: float, samples: int) -> float:
    """Median milliseconds of an empty function run on a worker thread and awaited, after an idle gap."""
    times = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        for i in range(samples + 10):
            time.sleep(gap_s)
            start = time.perf_counter()
            worker.submit(lambda: None).result()
            if i >= 10:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@contextlib.contextmanager
def cpu_dma_latency(us: int | None) -> Iterator[str]:
    """Hold a PM QoS CPU latency request while inside (the kernel drops it when the file closes)."""
    if us is None:
        yield "not requested"
        return
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError as exc:
        yield f"refused: {exc}"
        return
    try:
        os.write(fd, struct.pack("i", us))
        yield f"{us} us held"
    finally:
        os.close(fd)


def main() -> int:
    """Command line; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gap-ms", type=float, default=10.0, help="idle time before each message (a cold start's wait)")
    p.add_argument("--spin-us", type=float, default=0.0, help="poll this long before blocking")
    p.add_argument("--cpu-dma-latency-us", type=int, default=None)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--out", type=Path, default=None, help="append the result as one JSON line")
    args = p.parse_args()
    gap, spin = args.gap_ms / 1e3, args.spin_us * 1e-6
    with cpu_dma_latency(args.cpu_dma_latency_us) as qos:
        result = {
            "gap_ms": args.gap_ms,
            "spin_us": args.spin_us,
            "cpu_dma_latency": qos,
            "bert_ids_3KB": wire_hop(3 << 10, gap, spin, args.samples),
            "resnet_image_602KB": wire_hop(3 * 224 * 224 * 4, gap, spin, args.samples),
            "handoff_ms": thread_handoff(gap, args.samples),
        }
    print(json.dumps(result))
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
