"""Human-readable view of a plan: what was planned for, the predictions, and per layer what happens."""

from __future__ import annotations

from collections.abc import Sequence

from deepplan_backend.runtime.plan import DHA, Plan, PlanError, PlanVariant
from planner.planning import profile_of
from planner.simulate import simulate

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(nbytes: int) -> str:
    """Bytes in binary units with three significant-ish digits, e.g. `89.4 MiB`."""
    value = float(nbytes)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # the loop always returns on its last unit


def _label(variant: PlanVariant) -> str:
    return f"{variant.engine} x{variant.num_devices}"


def _header(plan: Plan) -> list[str]:
    """Plan identity, link profile and one prediction line per variant, with speed-up over on-demand."""
    k = plan.key
    total = sum(layer.nbytes for layer in plan.layers)
    concurrent = ", ".join(f"{n}: {g:g}" for n, g in sorted(plan.links.concurrent_h2d_gbps.items()))
    lines = [
        f"plan for {k.model}: batch {k.batch_size}, seq {k.seq_len}, {k.dtype}, {k.gpu_name}, {k.execution} execution",
        f"  fingerprint {plan.fingerprint}  created {plan.created_at or '?'}  schema v{plan.schema_version}",
        f"  {len(plan.layers)} layers, {human_bytes(total)}; warm forward {plan.warm_ms:.3f} ms",
        f"  links: host->GPU {plan.links.h2d_gbps:g} GB/s, NVLink {plan.links.p2p_gbps:g} GB/s"
        + (f", concurrent host->GPU {{{concurrent}}} GB/s" if concurrent else ""),
        "predicted cold start:",
    ]
    demand = next((v.predicted_ms for v in plan.variants if v.engine == "demand"), None)
    for v in plan.variants:
        ratio = f"{demand / v.predicted_ms:5.2f}x vs demand" if demand and v.predicted_ms > 0 else ""
        loaded = v.schedule.loaded_bytes([layer.nbytes for layer in plan.layers])
        lines.append(
            f"  {_label(v):<12} {v.predicted_ms:9.3f} ms  {ratio:<16} "
            f"DHA layers {len(v.schedule.dha_layers):>4}, loads {human_bytes(loaded)}"
        )
    return lines


def _table(plan: Plan, variant: PlanVariant) -> list[str]:
    """One row per layer: costs, decision, device slot and the simulated wait before it runs."""
    timeline = simulate(profile_of(plan), variant.schedule)
    width = max([len("name")] + [len(layer.name) for layer in plan.layers])
    head = (
        f"{'#':>5}  {'name':<{width}}  {'bytes':>10}  {'load ms':>9}  {'exec ms':>9}  {'dha ms':>9}  "
        f"{'decision':<8}  {'slot':>4}  {'wait ms':>9}"
    )
    lines = [
        f"{_label(variant)}: predicted {variant.predicted_ms:.3f} ms, stalls {timeline.total_stall_ms:.3f} ms in all",
        head,
        "-" * len(head),
    ]
    for i, (layer, src) in enumerate(zip(plan.layers, variant.schedule.sources, strict=True)):
        decision, slot = ("DHA", "-") if src == DHA else ("load", str(src))
        lines.append(
            f"{layer.index:>5}  {layer.name:<{width}}  {human_bytes(layer.nbytes):>10}  {layer.load_ms:9.4f}  "
            f"{layer.exec_ms:9.4f}  {layer.dha_exec_ms:9.4f}  {decision:<8}  {slot:>4}  {timeline.stall_ms(i):9.4f}"
        )
    return lines


def format_plan(plan: Plan, chosen: Sequence[tuple[str, int]] | None = None) -> str:
    """The plan as text: header with predictions, then a per-layer table for each chosen (engine, devices).

    By default the tables show the deepplan variants (the ones whose decisions are worth reading); a chosen
    variant the plan does not hold raises PlanError naming what it holds.
    """
    if chosen is None:
        picked = [v for v in plan.variants if v.engine == "deepplan"] or list(plan.variants)
    else:
        picked = [plan.variant(engine, n) for engine, n in chosen]
    lines = _header(plan)
    for variant in picked:
        lines.append("")
        try:
            lines.extend(_table(plan, variant))
        except PlanError as exc:
            raise PlanError(f"cannot show {_label(variant)} of {plan.key.model}'s plan: {exc}") from exc
    return "\n".join(lines) + "\n"
