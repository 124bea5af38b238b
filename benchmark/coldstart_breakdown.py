"""Where a cold request's time goes inside Triton, drawn from `benchmark.triton_coldstart`'s CSV(s).

    python3 -m benchmark.coldstart_breakdown results/triton_coldstart.csv [more.csv ...] -o results/triton_coldstart.png

One horizontal bar per model row, split into what the engine does (taking budget, the cold forward, the release),
what the deepplan backend adds around it (the stub, the hop to the engine host, the host's validation, queue and
reply), and what Triton adds (its gRPC front, its Python-backend IPC). The parts are medians of the cold requests'
trace phases (``trace_*_ms``), so they need not add up to the client's median exactly: a black tick marks that.
A red dotted tick marks the target (1.2 x the engine's cold latency); a dashed one the engine's cold latency plus
Triton's floor (``triton_floor_ms``: the same request to a Python model that computes nothing), the least any
Python-backend model could reach.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from .plot_files import plot_main

SEGMENTS = (
    ("engine: budget bookkeeping (room)", "#1f4e79"),
    ("engine: evicting victims (room)", "#7030a0"),
    ("engine: cold forward", "#2e75b6"),
    ("engine: release", "#9dc3e6"),
    ("backend: host validate + queue", "#c55a11"),
    ("backend: hop to the engine host", "#f4b183"),
    ("backend: host reply and rest", "#fbe5d6"),
    ("backend: stub read + respond", "#ffd966"),
    ("Triton: Python-backend IPC", "#7f7f7f"),
    ("Triton: gRPC front", "#bfbfbf"),
)


class BreakdownError(ValueError):
    """A CSV that is not `triton_coldstart`'s, or a row without the trace phases."""


def _ms(row: dict[str, str], column: str) -> float:
    text = row.get(column) or ""
    try:
        return float(text) if text else 0.0
    except ValueError:
        raise BreakdownError(f"{row.get('model')}: {column} is {text!r}, not a number") from None


def segments(row: dict[str, str]) -> list[float]:
    """The `SEGMENTS` of one CSV row, in ms (negative differences of medians clipped to 0)."""
    t = {p: _ms(row, f"trace_{p}_ms") for p in ("read", "answer", "respond", "metrics", "exchange", "host", "validate",
                                                "queue", "room", "evict", "engine", "release")}  # fmt: skip
    client, backend = _ms(row, "client_cold_ms"), _ms(row, "backend_cold_ms")
    if not client or not t["answer"]:
        raise BreakdownError(f"{row.get('model')}: no client latency or trace phases (was DEEPPLAN_TRACE on?)")
    hop = max(0.0, t["exchange"] - t["host"]) if t["exchange"] else 0.0
    inner = t["validate"] + t["queue"] + t["room"] + t["engine"] + t["release"]
    stub = t["read"] + t["respond"] + t["metrics"]
    parts = [
        t["room"] - t["evict"],  # CSVs before session 9's last runs have no evict phase: all of room is here
        t["evict"],
        t["engine"],
        t["release"],
        t["validate"] + t["queue"],
        hop,
        t["answer"] - hop - inner,
        stub,
        backend - t["answer"] - stub,
        client - backend,
    ]
    return [max(0.0, p) for p in parts]


def read_rows(paths: Sequence[Path]) -> list[dict[str, str]]:
    """The rows of every CSV, in order; BreakdownError for a file that is not a `triton_coldstart` CSV."""
    rows: list[dict[str, str]] = []
    for path in paths:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            if "trace_answer_ms" not in fields or "client_cold_ms" not in fields:
                raise BreakdownError(f"{path}: not a triton_coldstart CSV (no client_cold_ms / trace_* columns)")
            rows += list(reader)
    return rows


def plot_breakdown(rows: Sequence[dict[str, str]], path: Path, title: str = "") -> Path:
    """Write the stacked bars of `rows` to `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on GPU hosts
    import matplotlib.pyplot as plt

    labels = [f"{r['model']} ({r.get('process') or '?'})" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.55 * len(rows)))
    for i, row in enumerate(rows):
        left = 0.0
        for (name, color), width in zip(SEGMENTS, segments(row), strict=True):
            ax.barh(i, width, left=left, color=color, edgecolor="white", linewidth=0.5, label=name if i == 0 else None)
            left += width
        ax.plot([_ms(row, "client_cold_ms")] * 2, [i - 0.4, i + 0.4], color="black", linewidth=1.5,
                label="client median" if i == 0 else None)  # fmt: skip
        engine = _ms(row, "engine_cold_ms")
        if engine:
            ax.plot([1.2 * engine] * 2, [i - 0.45, i + 0.45], color="#c00000", linestyle=":", linewidth=1.5,
                    label="1.2 x engine cold (target)" if i == 0 else None)  # fmt: skip
        floor = _ms(row, "triton_floor_ms")  # absent from CSVs before session 9
        if engine and floor:
            ax.plot([engine + floor] * 2, [i - 0.45, i + 0.45], color="#404040", linestyle="--", linewidth=1.2,
                    label="engine cold + Triton's floor" if i == 0 else None)  # fmt: skip
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("cold request, ms (medians)")
    ax.grid(True, axis="x", alpha=0.3)
    gpu = rows[0].get("gpu_name", "") if rows else ""
    ax.set_title(title or f"Where a cold request's time goes{f', {gpu}' if gpu else ''}")
    fig.tight_layout()
    # Under the figure as laid out (its x label included); the tight bounding box of savefig takes it in.
    fig.legend(fontsize="x-small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, 0.0))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def draw(paths: Sequence[Path], path: Path, title: str = "") -> Path:
    """`plot_breakdown` of the rows of every CSV in `paths` (the `plot_files.Draw` of this module)."""
    return plot_breakdown(read_rows(paths), path, title)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; see the module docstring."""
    return plot_main(argv, "benchmark.coldstart_breakdown", __doc__ or "", draw, BreakdownError)


if __name__ == "__main__":
    sys.exit(main())
