"""Session 16 probe: host memory taken by a pinned buffer of a model's size, by allocator.

PyTorch's allocator against `exact_pinned_empty`, each size and allocator in a fresh process (RSS before and
after, MiB).

    python3 results/logs/s16/pinned_probe.py > pinned_probe.txt
"""

import subprocess
import sys

CHILD = """
import os, sys, torch
from deepplan_backend.runtime.pinned_memory import exact_pinned_empty
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
torch.cuda.init(); torch.empty(1, pin_memory=True)  # the context and the allocator's first block, outside the delta
how, mib = sys.argv[1], float(sys.argv[2])
n = int(mib * 2**20)
before = rss()
buf = torch.empty(n, dtype=torch.uint8, pin_memory=True) if how == 'torch' else exact_pinned_empty(n)
buf.fill_(1)
print(f'{how:6s} {mib:8.1f} MiB asked: RSS +{rss() - before:8.1f} MiB, is_pinned={buf.is_pinned()}')
"""

for mib in (97.5, 417.6, 1278.0):  # ResNet-50, BERT-Base, BERT-Large in float32
    for how in ("torch", "exact"):
        out = subprocess.run([sys.executable, "-c", CHILD, how, str(mib)], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip()[-400:], flush=True)
