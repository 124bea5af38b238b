"""Session 17: what giving each shared instance its own module tree costs, deep copy against `clone_sharing_tensors`.

CPU host (2 cores), the same process and models for both, 7 rounds each alternating, medians printed:
    python3 results/logs/s17/cpu_clone_timing.py > results/logs/s17/cpu_clone_timing.txt
"""

import copy
import statistics
import time

from deepplan_backend.runtime import prepared

for name in ("bert-base", "resnet50", "gpt2"):
    module = prepared.prepare_shared(name, "float32", 0).model.module
    keep = {id(t): t for t in (*module.parameters(), *module.buffers())}
    deep, clone = [], []
    for _ in range(7):
        start = time.perf_counter()
        copy.deepcopy(module, memo=dict(keep))  # what prepare_shared did before 88038c2
        deep.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        prepared.clone_sharing_tensors(module)
        clone.append((time.perf_counter() - start) * 1e3)
    print(f"{name}: deep copy {statistics.median(deep):.2f} ms, clone {statistics.median(clone):.2f} ms (medians of 7)")
