"""What making a model's host weights ready costs a process: building them, against mapping their weights image.

    python3 -m benchmark.host_weights [--models bert-base resnet50] [--repeat 3] [-o results/host_weights.csv]

For each model, fresh processes (as an engine host or a stub is) make the host weights ready three ways:
- ``private``: build the model, trace its layer table, pack it into this process's own pinned buffer (what every
  process did before weights images, and does with ``DEEPPLAN_WEIGHT_IMAGES=0``): the baseline;
- ``image_build``: the same, packed into a new weights image in shared memory (the first process of a server);
- ``image_map``: map that image, bind a skeleton module to it and page-lock it (every other process, and the
  replacement of a host that died).
Each process imports first (what a standby host preloads) and, on a GPU, creates its CUDA context before the
clock starts: those are paid either way. Times are medians over ``--repeat`` processes; ``speedup`` is ``private``
over ``image_map``, in the same run. The image folder is a scratch folder in /dev/shm, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from deepplan_backend.runtime.residency import state_base

from .table import write_records

COLUMNS = (
    "model",
    "dtype",
    "device",
    "bytes",
    "private_ms",
    "image_build_ms",
    "image_map_ms",
    "speedup",
    "private_laps_ms",
    "image_build_laps_ms",
    "image_map_laps_ms",
    "repeat",
    "host",
)
MODES = ("private", "image_build", "image_map")

# One measurement in a fresh process; prints one JSON line. argv: mode, model, dtype, image folder.
_CHILD = """
import json, sys, time
from pathlib import Path
import torch
from deepplan_backend.hosting.standby import preload_imports
from deepplan_backend.runtime.prepared import prepare, prepare_imaged
mode, model, dtype, folder = sys.argv[1:5]
preload_imports()  # as an engine host or its standby has done before its models register
if torch.cuda.is_available():
    torch.cuda.init(); torch.empty(1, device="cuda")  # the context is paid either way: not timed
start = time.perf_counter()
p = prepare(model, dtype) if mode == "private" else prepare_imaged(Path(folder), model, dtype)
total = (time.perf_counter() - start) * 1e3
origin = p.origin
print(json.dumps({"total_ms": total, "laps_ms": p.prepare_ms, "origin": origin, "bytes": p.table.total_bytes}))
"""


def measure(mode: str, model: str, dtype: str, folder: Path) -> dict[str, Any]:
    """One fresh process making `model`'s host weights ready in `mode`; its JSON line.

    An `image_build` process leaves its image behind (a process that exits without releasing keeps it for the
    next), which `image_map` then maps.
    """
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, model, dtype, str(folder)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"{mode} {model}: exit {run.returncode}\n{run.stderr[-2000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    want = {"private": "prepared", "image_build": "prepared in image", "image_map": "mapped from image"}[mode]
    if not str(result["origin"]).startswith(want):
        raise RuntimeError(f"{mode} {model}: expected '{want}', the process says '{result['origin']}'")
    return result


def _median_laps(results: list[dict[str, Any]]) -> dict[str, float]:
    return {k: round(statistics.median(float(r["laps_ms"][k]) for r in results), 2) for k in results[0]["laps_ms"]}


def main(argv: list[str] | None = None) -> int:
    """Run every model; see the module docstring."""
    p = argparse.ArgumentParser(prog="python3 -m benchmark.host_weights", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["bert-base", "resnet50"], help="zoo names or checkpoint folders")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeat", type=int, default=3, help="processes per mode and model (median)")
    p.add_argument("-o", "--output", type=Path, default=Path("results/host_weights.csv"))
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    host = f"{platform.node()} ({platform.processor() or platform.machine()})"
    records = []
    for model in args.models:
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        for i in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="deepplan-bench-images-", dir=state_base()) as d:
                for mode in MODES:  # image_map maps the image image_build left
                    runs[mode].append(measure(mode, model, args.dtype, Path(d)))
                    print(f"{model} #{i + 1} {mode}: {float(runs[mode][-1]['total_ms']):.0f} ms", flush=True)
        ms = {m: statistics.median(float(r["total_ms"]) for r in runs[m]) for m in MODES}
        records.append({
            "model": model, "dtype": args.dtype, "device": device, "bytes": runs["private"][0]["bytes"],
            "private_ms": ms["private"], "image_build_ms": ms["image_build"], "image_map_ms": ms["image_map"],
            "speedup": ms["private"] / ms["image_map"],
            **{f"{m}_laps_ms": json.dumps(_median_laps(runs[m])) for m in MODES},
            "repeat": args.repeat, "host": host,
        })  # fmt: skip
        r = records[-1]
        print(f"{model}: private {ms['private']:.0f} ms, image build {ms['image_build']:.0f} ms, image map "
              f"{ms['image_map']:.0f} ms: {r['speedup']:.1f}x faster ({device})", flush=True)  # fmt: skip
        write_records(records, COLUMNS, args.output)
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
