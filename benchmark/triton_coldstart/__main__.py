"""``python3 -m benchmark.triton_coldstart``: one run from the options to the exit code (see the package docstring)."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmark.coldstart_breakdown import BreakdownError
from benchmark.coldstart_breakdown import draw as draw_breakdown
from benchmark.plot_files import draw_beside
from benchmark.triton_coldstart.cli import parse_args, resolve_budget
from benchmark.triton_coldstart.client import grpc_module
from benchmark.triton_coldstart.progress import say
from benchmark.triton_coldstart.protocol import Bench
from benchmark.triton_coldstart.report import document, print_table, write_outputs
from benchmark.triton_coldstart.repository import Layout, build_repository
from deepplan_backend import install, serve
from deepplan_backend.runtime.answer import TRACE_ENV
from deepplan_backend.runtime.residency import scratch_state_dir


def device_info() -> tuple[bool, str, int]:
    """(GPU present, name used in plans, number of GPUs)."""
    if torch.cuda.is_available():
        return True, torch.cuda.get_device_name(0), torch.cuda.device_count()
    return False, "cpu", 0


def preflight() -> None:
    """Fail early (before building anything): no Python backend stub for this Python, or no gRPC client.

    Raises:
        install.InstallError: with the reason.
    """
    install.find_triton_dist().stub_for(install.current_python_version())
    try:
        grpc_module()
    except Exception as exc:  # ImportError, or protobuf refusing the client's generated code
        raise install.InstallError(
            f"tritonclient.grpc cannot be imported ({type(exc).__name__}: {exc}); it needs grpcio, protobuf (at "
            "least the version its generated code names), numpy, packaging and ml_dtypes"
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the exit code says whether the run was complete and correct."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ[TRACE_ENV] = "1"  # the server inherits it: per-request phase lines for the trace_* columns
    try:
        preflight()
    except install.InstallError as exc:
        say(f"error: {exc}")
        return 2
    gpu, gpu_name, num_gpus = device_info()
    budget = resolve_budget(args)
    say(f"devices: {num_gpus} x {gpu_name}" if gpu else "devices: CPU only")
    with (
        tempfile.TemporaryDirectory(prefix="deepplan-coldstart-") as tmp,
        scratch_state_dir("deepplan-coldstart-state-") as state,
    ):
        lay = Layout(args.out, Path(tmp), budget, gpu, Path(state))
        build_repository(args, lay)
        say(
            f"repository: {len(args.models)} model(s) + {args.instances} eviction instances of {args.models[0]}, "
            f"budget {budget / 2**20:.1f} MiB per device, plans in {lay.plans}"
        )
        bench = Bench(args, lay)
        no_server = None
        try:
            bench.start()
            bench.run()
        except (serve.ServeError, install.InstallError) as exc:
            no_server = f"the server did not start: {exc}"
            say(f"error: {no_server}")
        except Exception as exc:  # e.g. the reference model: record it, still stop the server and write results
            bench.session.errors.append(f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            bench.stop()
        doc = document(bench, gpu_name, num_gpus)
        if no_server:
            doc["errors"].insert(0, no_server)
        csv_path, json_path = write_outputs(doc, args.out)
    print_table(doc)
    say(f"wrote {csv_path}, {json_path} and {args.out / 'server.log'}")
    draw_beside(csv_path, draw_breakdown, BreakdownError, "benchmark.coldstart_breakdown", say)
    if no_server:
        return 2
    if doc["errors"] or not doc["all_correct"]:
        say("FAILED: " + ("; ".join(doc["errors"]) or "some answers differ from the reference"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
