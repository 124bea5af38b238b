"""Probe (session 17): what a fresh engine-host process pays once on its GPU, and how much a generic priming saves.

Each variant runs in a fresh process with the imports done first (as a standby has them), then times:
context (first device tensor), pin (exact-size page-locking of a BERT-Base-sized buffer), and a BERT-Base's first
and later eager forwards (batch 1, 384 tokens). `primed` runs a small generic warm-up on a thread that exits
(GEMM, layer norm, softmax, GELU, embedding) before the timed part; `primed+pin` also page-locks a buffer first.
Prints one JSON line per run. (Run as committed but for line breaks and unused imports removed afterwards.)
"""

import subprocess
import sys

CHILD = r"""
import json, sys, threading, time
import torch, transformers
from deepplan_backend.runtime.pinned_memory import exact_pinned_empty
from deepplan_backend.runtime.zoo import load_model
variant = sys.argv[1]
dev = torch.device("cuda:0")
out = {"variant": variant}
def prime():
    torch.cuda.set_device(0)
    a = torch.randn(64, 64, device=dev)
    (a @ a).sum().item()
    torch.nn.functional.layer_norm(a, (64,)).softmax(-1)
    torch.nn.functional.gelu(a)
    torch.nn.functional.embedding(torch.zeros(4, dtype=torch.long, device=dev), a)
    torch.cuda.synchronize()
if variant.startswith("primed"):
    t = time.perf_counter(); th = threading.Thread(target=prime); th.start(); th.join()
    out["prime_ms"] = (time.perf_counter() - t) * 1e3
    if variant == "primed+pin":
        t = time.perf_counter()
        keep = exact_pinned_empty(420 << 20)
        out["prepin_ms"] = (time.perf_counter() - t) * 1e3
model = load_model("bert-base")  # host, random weights: not timed
m = model.module.eval()
t = time.perf_counter()
x = torch.zeros(1, device=dev)
torch.cuda.synchronize()
out["context_ms"] = (time.perf_counter() - t) * 1e3
t = time.perf_counter(); buf = exact_pinned_empty(420 << 20); out["pin_ms"] = (time.perf_counter() - t) * 1e3
m.to(dev)
torch.cuda.synchronize()
inputs = {k: v.to(dev) for k, v in model.example_inputs(1, 384).items()}
laps = []
def fwd():
    with torch.inference_mode():
        m(**inputs)
    torch.cuda.synchronize()
for i in range(4):
    t = time.perf_counter(); fwd(); laps.append((time.perf_counter() - t) * 1e3)
out["forwards_ms"] = [round(v, 2) for v in laps]
out["first_extra_ms"] = round(laps[0] - min(laps[1:]), 2)
print(json.dumps(out), flush=True)
"""

for _round in range(2):
    for variant in ("fresh", "primed", "primed+pin", "fresh"):
        r = subprocess.run([sys.executable, "-c", CHILD, variant], capture_output=True, text=True)
        print(r.stdout.strip() or r.stderr[-2000:], flush=True)
