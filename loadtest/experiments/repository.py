"""The model repository of one experiment point: its instances and the deepplan parameters each one gets."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .devices import Devices, device_param, target_gpu
from .engines import ENGINES


@dataclass(frozen=True)
class Instance:
    """One Triton model of a point: its name and the zoo model it serves."""

    name: str
    model: str


def instance_names(models: Sequence[str], count: int) -> list[Instance]:
    """``count`` instances; instance i serves ``models[i % len(models)]`` and is named ``<model>-<i>``.

    With one model these are the names ``locust --model-prefix <model>- --instances N`` uses.
    """
    return [Instance(f"{models[i % len(models)]}-{i}", models[i % len(models)]) for i in range(count)]


def model_params(args: argparse.Namespace, plans: Path, residency: Path) -> dict[str, str]:
    """The deepplan parameters every instance of a point shares (budget, plans, residency, --param)."""
    params = {"plan_repository": str(plans.resolve()), "residency_dir": str(residency.resolve())}
    if args.budget:
        params["budget"] = args.budget
    params["seq_len"] = str(args.seq_len)
    for pair in args.param:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        params[key] = value
    return params


def build_repository(
    repo: Path,
    instances: Sequence[Instance],
    variant: str,
    dev: Devices,
    params: dict[str, str],
) -> None:
    """One deepplan model per instance, round-robin over the GPUs (parameter ``target_gpu``) or on the CPU.

    Front ends are ``KIND_CPU`` either way: with ``process: shared`` (the default) the GPU work runs in the
    target GPU's engine host, so the stubs hold no CUDA context.
    """
    from deepplan_backend.repository import config_pbtxt, family_of, write_model

    engine = ENGINES[variant][0]
    for i, inst in enumerate(instances):
        p = {"engine": engine, "devices": device_param(variant, i, dev), **params}
        if engine == "pipeline":
            p.setdefault("graphs", "false")
        if dev.gpu_ids:
            p.setdefault("target_gpu", str(target_gpu(i, dev)))
        if family_of(inst.model) == "resnet":
            p.pop("seq_len", None)  # image models have no sequence
        text = config_pbtxt(
            inst.name,
            inst.model,
            parameters=p,
            queue_delay_us=0,  # latency is measured: no artificial batching wait
        )
        write_model(repo, inst.name, text)
