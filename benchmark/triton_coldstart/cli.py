"""The benchmark's command line: its options, their ``--quick`` defaults, and the budget they resolve to."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

import benchmark.triton_coldstart as package
from deepplan_backend.runtime import zoo
from deepplan_backend.runtime.serve_settings import parse_size


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line; ``--quick`` fills unset options with tiny models and few repeats."""
    description = (package.__doc__ or "").split("\n")[0]
    p = argparse.ArgumentParser(prog="python3 -m benchmark.triton_coldstart", description=description)
    p.add_argument("--out", type=Path, default=Path("results/triton"), help="output folder (default %(default)s)")
    p.add_argument("--models", nargs="+", default=None, help="zoo models (default bert-base resnet50)")
    p.add_argument("--instances", type=int, default=None, help="eviction copies of the first model (default 8)")
    p.add_argument("--budget", default="auto", help="per-device budget, e.g. 2GiB; auto: fits about instances/2")
    p.add_argument("--engine", default="deepplan", choices=("demand", "pipeline", "deepplan"))
    p.add_argument(
        "--eager", action="store_true", help="deepplan parameter graphs=false (default: CUDA graph replay on GPU)"
    )
    p.add_argument(
        "--process",
        choices=("shared", "instance"),
        default="shared",
        help="deepplan parameter process: the engine host of the target GPU (default) or each model's own stub",
    )
    p.add_argument("--devices", default="auto", help='deepplan "devices" parameter: auto or ids, target first')
    p.add_argument("--seq-len", type=int, default=None, help="tokens per text request (default: the model's)")
    p.add_argument("--warm", type=int, default=None, help="warm requests per model (default 20)")
    p.add_argument("--recold", type=int, default=None, help="forced cold starts per model (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="round-robin passes of the eviction run (default 3)")
    p.add_argument("--triton-kind", choices=("cpu", "gpu"), default="cpu", help="Triton instance kind (see doc)")
    p.add_argument("--ready-timeout", type=float, default=420.0, help="seconds to wait for the server")
    p.add_argument("--skip-load-compare", action="store_true", help="skip step 7 (model-control API loads)")
    p.add_argument("--quick", action="store_true", help="tiny models, few repeats (CPU tests)")
    args = p.parse_args(argv)
    quick = args.quick
    args.models = args.models or (["tiny-bert", "tiny-resnet"] if quick else ["bert-base", "resnet50"])
    args.instances = args.instances if args.instances is not None else (3 if quick else 8)
    args.warm = args.warm if args.warm is not None else (5 if quick else 20)
    args.recold = args.recold if args.recold is not None else (2 if quick else 10)
    args.rounds = args.rounds if args.rounds is not None else (2 if quick else 3)
    for m in args.models:
        if m not in zoo.ZOO:
            p.error(f"--models: {m!r} is not a zoo model ({', '.join(zoo.ZOO)})")
    if args.instances < 2:
        p.error("--instances must be >= 2 (they force the cold starts and evictions)")
    return args


def weight_bytes(model: str) -> int:
    """FP32 bytes of the zoo model's parameters and buffers (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        module = zoo._build_from_config(zoo.ZOO[model])
    tensors = [*module.parameters(), *module.buffers()]
    return int(sum(t.numel() * t.element_size() for t in tensors))


def resolve_budget(args: argparse.Namespace) -> int:
    """``--budget`` in bytes; ``auto`` holds (instances // 2) + 0.5 copies of the first model's weights."""
    sizes = {m: weight_bytes(m) for m in args.models}
    if args.budget != "auto":
        budget = parse_size(args.budget, "--budget")
    else:
        budget = int((max(1, args.instances // 2) + 0.5) * sizes[args.models[0]])
    largest = max(sizes.values())
    if budget < largest:
        raise SystemExit(f"--budget {budget} bytes is smaller than the largest model ({largest} bytes)")
    return budget
