"""Where one run's files live (`Layout`), and the deepplan models of the repository Triton loads at start."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from deepplan_backend.repository import config_pbtxt, write_model


@dataclass
class Layout:
    """Where everything of one run lives."""

    out: Path
    tmp: Path
    budget: int
    gpu: bool
    state: Path  # the residency folder's parent: in memory, as a server's own (`residency.scratch_state_dir`)

    @property
    def repo(self) -> Path:
        """Triton's model repository (temporary)."""
        return self.tmp / "repo"

    @property
    def plans(self) -> Path:
        """Plan repository (kept in the output folder)."""
        return self.out / "plans"

    @property
    def residency(self) -> Path:
        """Residency state folder shared by the server's deepplan models."""
        return self.state / "residency"

    @property
    def checkpoints(self) -> Path:
        """Checkpoint folders of the plain Python models."""
        return self.tmp / "checkpoints"


def deepplan_config(name: str, model: str, args: argparse.Namespace, lay: Layout) -> str:
    """One deepplan model of this run: engine, devices, shared budget, plan repository, residency state."""
    params = {
        "engine": args.engine,
        "devices": args.devices,
        "budget": str(lay.budget),
        "plan_repository": str(lay.plans.resolve()),
        "residency_dir": str(lay.residency),
    }
    if args.seq_len:
        params["seq_len"] = str(args.seq_len)
    params["graphs"] = "false" if args.eager else "true"
    params["process"] = args.process
    gpu_kind = lay.gpu and args.triton_kind == "gpu"
    return config_pbtxt(
        name,
        model,
        parameters=params,
        kind="KIND_GPU" if gpu_kind else "KIND_CPU",
        gpus=(0,) if gpu_kind else (),
        queue_delay_us=0,  # latency, not batching, is measured: no artificial queue wait
    )


def evict_names(args: argparse.Namespace) -> list[str]:
    """Names of the eviction instances of the first model."""
    return [f"{args.models[0]}-evict-{i}" for i in range(args.instances)]


def build_repository(args: argparse.Namespace, lay: Layout) -> None:
    """The repository Triton loads at start: the listed models and the eviction instances."""
    for model in args.models:
        write_model(lay.repo, model, deepplan_config(model, model, args, lay))
    for name in evict_names(args):
        write_model(lay.repo, name, deepplan_config(name, args.models[0], args, lay))
