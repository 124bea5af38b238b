"""PT evidence (step 5) from the plan files the backend wrote: which layers each variant loads through which GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plan_summary(plans: Path) -> dict[str, Any]:
    """PT evidence from the plan files the backend wrote: per variant, layers and MiB per load source."""
    from deepplan_backend.runtime.plan_repository import list_plans, read_plan

    summary: dict[str, Any] = {}
    for path in list_plans(plans):
        plan = read_plan(path)
        variants = []
        for v in plan.variants:
            sources: dict[str, dict[str, float]] = {}
            for layer, src in zip(plan.layers, v.schedule.sources, strict=True):
                name = "dha" if src < 0 else "target" if src == 0 else f"peer{src}"
                entry = sources.setdefault(name, {"layers": 0, "mib": 0.0})
                entry["layers"] += 1
                entry["mib"] += layer.nbytes / 2**20
            variants.append(
                {"engine": v.engine, "num_devices": v.num_devices, "predicted_ms": v.predicted_ms, "sources": sources}
            )
        summary[path.name] = {"model": plan.key.model, "gpu": plan.key.gpu_name, "variants": variants}
    return summary


def peer_layers(summary: dict[str, Any], model: str, gpu: str, engine: str, num_devices: int) -> int | None:
    """Layers that the served variant of `model` loads through peer GPUs (PT), from `plan_summary`."""
    for plan in summary.values():
        if plan["model"] != model or plan["gpu"] != gpu:
            continue
        for v in plan["variants"]:
            if v["engine"] == engine and v["num_devices"] == num_devices:
                return sum(int(e["layers"]) for k, e in v["sources"].items() if k.startswith("peer"))
    return None
