"""`python3 -m planner -m resnet50 -p plans`: profile a model on this machine's GPU and write its plan.

Like the seed's `plan.py`, plus: `--all` plans the paper's eight models, `-d` chooses the GPUs whose links
are measured for parallel transmission, and `--show FILE` prints a plan as a table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from deepplan_backend.runtime.plan import PlanError
from deepplan_backend.runtime.plan_repository import read_plan, save_plan
from deepplan_backend.runtime.prepared import prepare
from deepplan_backend.runtime.transfer import DeviceError, resolve_devices
from deepplan_backend.runtime.zoo import PAPER_MODELS, ModelSourceError, parse_dtype

from .device_planning import Sampling, plan_on_devices
from .plan_view import format_plan


def positive_int(text: str) -> int:
    """Parse an integer >= 1 (batch sizes, lengths, repeat counts)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """Parse an integer >= 0 (warm-up counts)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def default_plan_repo() -> Path:
    """`PLAN_REPO` if set (the seed's variable), else `./plans`."""
    return Path(os.environ.get("PLAN_REPO", "plans"))


def device_counts_for(num_devices: int) -> list[int]:
    """Plan variants for 1 device and for every power of two up to the number of GPUs given."""
    counts, k = [1], 2
    while k <= num_devices:
        counts.append(k)
        k *= 2
    if num_devices not in counts:
        counts.append(num_devices)
    return counts


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m planner", description=__doc__)
    p.add_argument("-m", "--model", action="append", default=[], help="zoo name or HF checkpoint folder (repeatable)")
    p.add_argument("--all", action="store_true", help="plan the paper's eight models")
    p.add_argument(
        "-p", "--plan-repo", type=Path, default=None, help="plan repository (default: $PLAN_REPO or ./plans)"
    )
    p.add_argument("-b", "--batch-size", type=positive_int, default=1)
    p.add_argument(
        "-s", "--seq-len", type=positive_int, default=None, help="default: the model's (384 BERT/RoBERTa, 1024 GPT-2)"
    )
    p.add_argument("--dtype", default="float32", help="float32 (default), float16, bfloat16")
    p.add_argument(
        "-d", "--devices", type=int, nargs="+", default=None, help="GPU ids; first is the target (default: all)"
    )
    p.add_argument(
        "--graphs",
        action="store_true",
        help="plan for CUDA-graph execution (the backend's `graphs` parameter): layer times measured GPU-bound",
    )
    p.add_argument("--warmup", type=non_negative_int, default=3)
    p.add_argument("--repeats", type=positive_int, default=10)
    p.add_argument("--show", type=Path, default=None, metavar="PLAN_FILE", help="print a plan file and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def _all_devices() -> list[int] | None:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else None


def plan_one(name: str, args: argparse.Namespace, repo: Path) -> Path:
    """Profile and plan one model; returns the written plan file."""
    devices = resolve_devices(args.devices if args.devices is not None else _all_devices())
    prepared = prepare(name, dtype=parse_dtype(args.dtype))
    plan, verdicts = plan_on_devices(
        prepared,
        devices,
        device_counts_for(len(devices)),
        args.batch_size,
        args.seq_len,
        args.graphs,
        Sampling(warmup=args.warmup, repeats=args.repeats),
        progress=not args.quiet,
    )
    path = save_plan(repo, plan)
    print(format_plan(plan))
    for verdict in verdicts:
        print(f"checked on the devices: {verdict.describe()}")
    print(f"plan written: {path}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.show is not None:
        try:
            print(format_plan(read_plan(args.show)))
        except PlanError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    models = list(PAPER_MODELS) if args.all else args.model
    if not models:
        _parser().error("give -m MODEL (repeatable) or --all")
    repo = args.plan_repo or default_plan_repo()
    for name in models:
        try:
            plan_one(name, args, repo)
        except (ModelSourceError, DeviceError, PlanError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
