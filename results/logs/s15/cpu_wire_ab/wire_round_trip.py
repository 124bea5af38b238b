"""Front-end round trips over a Unix socket, the wire before session 15 against after.

Before: a socket call per part. After: one sendmsg, two reads. Each with and without a thread spinning in Python
in the answering process (an engine host whose device thread holds the GIL). Order: old, new, new, old per setting.
Then the new wire with the spinning thread under shorter GIL switch intervals in the answering process (a lead, not
applied: `sys.setswitchinterval`, default 5 ms).

    git show 70a0984:deepplan_backend/hosting/wire.py > /tmp/wire_old.py
    python3 results/logs/s15/cpu_wire_ab/wire_round_trip.py /tmp/wire_old.py
"""

import importlib.util
import os
import socket
import statistics
import sys
import threading
import time

import numpy as np

from deepplan_backend.hosting import wire as new_wire

spec = importlib.util.spec_from_file_location("old_wire", sys.argv[1])
old_wire = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old_wire)
WIRES = {"old": old_wire, "new": new_wire}


def spin() -> None:
    """Hold the GIL but at the interpreter's switch interval (5 ms), as a busy device thread would."""
    while True:
        pass


def answer(sock, w, busy, switch_s=None):
    """The engine host's side: answer every request with a BERT-sized output."""
    if switch_s is not None:
        sys.setswitchinterval(switch_s)
    if busy:
        threading.Thread(target=spin, daemon=True).start()
    out = np.zeros((1, 768), np.float32)
    while True:
        try:
            w.recv_message(sock)
        except Exception:
            return
        w.send_message(sock, {"ok": True, "answers": [{"cold": True, "provision_ms": 1.0}]}, [out])


def round_trips(mode, busy, n=400, switch_s=None):
    """p50, p90, p99 of `n` round trips (the first 20 dropped), 2 ms apart, as a front end makes them."""
    w = WIRES[mode]
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        answer(b, w, busy, switch_s)
        os._exit(0)
    b.close()
    ids = np.arange(128, dtype=np.int64)[None]
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        w.send_message(a, {"op": "answer", "requests": [["input_ids"]], "sent_at": t}, [ids])
        w.recv_message(a)
        ms.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.002)
    a.close()
    os.waitpid(pid, 0)
    ms = sorted(ms[20:])
    return statistics.median(ms), ms[int(0.9 * len(ms))], ms[int(0.99 * len(ms))]


for busy in (False, True):
    for mode in ("old", "new", "new", "old"):
        p50, p90, p99 = round_trips(mode, busy)
        print(f"spinning thread={busy} wire={mode}: p50 {p50:.3f} p90 {p90:.3f} p99 {p99:.3f} ms", flush=True)
for switch_ms in (5.0, 1.0, 0.2):
    p50, p90, p99 = round_trips("new", True, switch_s=switch_ms / 1e3)
    print(f"spinning thread=True wire=new switch interval {switch_ms} ms: p50 {p50:.3f} p90 {p90:.3f} p99 {p99:.3f} ms")
