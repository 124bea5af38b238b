"""The command-line options every experiment shares, and their checks."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .engines import ENGINES, parse_engines


def default_seq_len(models: Sequence[str]) -> int:
    """16 when a tiny zoo model is involved (their position tables are short), else 384 (the paper's)."""
    return 16 if any(m.startswith("tiny-") for m in models) else 384


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by both experiments."""
    p.add_argument("--rate", type=float, default=100.0, help="target request rate, req/s (default 100)")
    p.add_argument("--slo-ms", type=float, default=100.0, help="latency SLO for goodput, ms (default 100)")
    p.add_argument(
        "--engines",
        nargs="+",
        default=["pipeline", "deepplan", "deepplan+pt"],
        help=f"engine variants, of {', '.join(ENGINES)} (default all three)",
    )
    p.add_argument("--devices", default="auto", help="GPUs to spread instances over: auto (all; CPU if none), cpu, 0,1")
    p.add_argument("--budget", default="", help="per-device residency budget, e.g. 2GiB (default: device memory)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per text request (default 384; 16 for tiny-*)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="extra deepplan parameter")
    p.add_argument("--seed", type=int, default=0, help="arrival schedule seed (default 0)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="client protocol (default grpc)")
    p.add_argument("--drain-s", type=float, default=30.0, help="wait for stragglers after the last arrival")
    p.add_argument(
        "--warmup-s", type=float, default=0.0, help="leave the first seconds out of the steady-state columns"
    )
    p.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for all models (default 900)")
    p.add_argument("--out", type=Path, required=True, help="output folder")


def check_common(p: argparse.ArgumentParser, args: argparse.Namespace, models: Sequence[str]) -> None:
    """Validate the shared options (``p.error`` exits with code 2)."""
    from deepplan_backend.runtime import zoo

    try:
        args.engines = parse_engines(args.engines)
    except ValueError as exc:
        p.error(f"--engines: {exc}")
    for m in models:
        if m not in zoo.ZOO:
            p.error(f"{m!r} is not a zoo model ({', '.join(zoo.ZOO)})")
    if args.rate <= 0 or args.slo_ms <= 0:
        p.error("--rate and --slo-ms must be > 0")
    if args.warmup_s < 0:
        p.error("--warmup-s must be >= 0")
    if args.budget:
        from deepplan_backend.runtime.serve_settings import parse_size

        try:
            parse_size(args.budget, "--budget")
        except Exception as exc:
            p.error(str(exc))
    if args.seq_len is None:
        args.seq_len = default_seq_len(models)
    for pair in args.param:
        if "=" not in pair:
            p.error(f"--param {pair!r}: expected KEY=VALUE")
