"""How long a full pass of Python's cyclic garbage collector holds a serving process, with and without freezing.

    python3 scripts/gc_pause_probe.py -m bert-base [--models 8 --requests 4000]

Loads one model of the zoo (the objects a process serving it holds), times a full collection, freezes what is
alive (`runtime/gc_pauses.py`) and times one again. Then serves `--requests` warm and cold requests over
`--models` tiny BERTs, records every full pass the collector starts on its own (`gc.callbacks`), and prints them
with the request latencies. The figures in `runtime/gc_pauses.py` come from this script on the CPU machine.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from deepplan_backend.runtime.gc_pauses import freeze_long_lived
from deepplan_backend.runtime.prepared import prepare
from deepplan_backend.runtime.serve_settings import ServeSettings
from deepplan_backend.runtime.served_model import ServedModel


def full_pass_ms() -> float:
    """Milliseconds of one full collection now."""
    start = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    """Command line; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-m", "--model", default="bert-base", help="zoo model whose objects the process holds")
    p.add_argument("--models", type=int, default=8, help="tiny BERTs served in the replay")
    p.add_argument("--requests", type=int, default=4000)
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="gc-probe-"))
    params = {"model": "tiny-bert", "engine": "deepplan", "budget": "64MiB"}
    params.update(plan_repository=str(work / "plans"), residency_dir=str(work / "state"))
    served = [
        ServedModel(ServeSettings.from_parameters(params, model_dir=work), f"m{k}#probe", 2, None)
        for k in range(args.models)
    ]
    held = prepare(args.model)
    print(f"{len(gc.get_objects())} tracked objects with {args.model}: full pass {full_pass_ms():.1f} ms")
    freeze_long_lived()
    print(f"after freezing {gc.get_freeze_count()} of them: full pass {full_pass_ms():.1f} ms")
    gc.unfreeze()  # the replay starts from the unfrozen heap, as a process that never froze would

    passes: list[float] = []
    began = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                began[0] = time.perf_counter()
            else:
                passes.append((time.perf_counter() - began[0]) * 1e3)

    gc.callbacks.append(on_gc)
    inputs = served[0].prepared.model.example_inputs(1, None)
    request = {name: tensor.numpy() for name, tensor in inputs.items()}
    latencies = []
    for i in range(args.requests):
        start = time.perf_counter()
        served[i % len(served)].answer([request])
        latencies.append((time.perf_counter() - start) * 1e3)
    gc.callbacks.remove(on_gc)
    latencies.sort()
    print(
        f"{args.requests} requests over {len(served)} models: {len(passes)} full passes "
        f"{[round(ms, 1) for ms in passes]} ms; latency p50 {latencies[len(latencies) // 2]:.2f} ms, "
        f"max {latencies[-1]:.1f} ms"
    )
    for model in served:
        model.close()
    del held


if __name__ == "__main__":
    main()
