"""Fig. 10 as a picture: each model's cold latency per configuration, normalised to On-Demand, from the table's CSV.

    python3 -m benchmark.fig10_plot results/fig10.csv            # writes results/fig10.png
    python3 -m benchmark.fig10_plot results/fig10.csv -o fig.png

Bars are measured cold latencies (median) over On-Demand's on the same model, as in the paper's Fig. 10; a black
tick on each bar is the planner's prediction, and a dotted line per model is its warm latency (the forward alone:
no cold start can be faster). `python3 -m benchmark --table` draws it beside its CSV when matplotlib is installed.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from .plot_files import plot_main

REQUIRED = ("model", "engine", "devices", "cold_ms", "warm_ms", "predicted_ms")


class TableError(ValueError):
    """The CSV is not a Fig. 10 table (missing columns, no On-Demand row for a model, bad numbers)."""


def read_table(path: Path) -> list[dict[str, str]]:
    """The rows of a table-mode CSV; TableError if it lacks a column the plot needs."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise TableError(f"{path}: not a table-mode CSV (missing column(s) {', '.join(missing)})")
        return list(reader)


def _config(row: dict[str, str]) -> str:
    devices = row["devices"].split()
    return row["engine"] if len(devices) <= 1 else f"{row['engine']} ×{len(devices)}"


def _number(row: dict[str, str], column: str) -> float | None:
    text = row.get(column) or ""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise TableError(f"{row['model']} {_config(row)}: {column} is {text!r}, not a number") from None


def plot_fig10(rows: Sequence[dict[str, str]], path: Path, title: str = "") -> Path:
    """Write the normalised cold-latency bar chart of `rows` (table-mode CSV rows) to `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on GPU hosts
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    configs = list(dict.fromkeys(_config(r) for r in rows))
    by_key = {(r["model"], _config(r)): r for r in rows}
    demand: dict[str, float] = {}
    warm: dict[str, float | None] = {}
    for model in models:
        base = next((r for r in rows if r["model"] == model and r["engine"] == "demand"), None)
        cold = _number(base, "cold_ms") if base is not None else None
        if base is None or not cold:
            raise TableError(f"{model}: no On-Demand row to normalise to")
        demand[model] = cold
        warm[model] = _number(base, "warm_ms")  # everything resident, nothing read from host memory
    width = 0.8 / len(configs)
    tallest = 1.0
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(models) + 2), 5.0))
    for j, config in enumerate(configs):
        xs, heights, predicted = [], [], []
        for i, model in enumerate(models):
            row = by_key.get((model, config))
            cold = _number(row, "cold_ms") if row is not None else None
            if row is None or cold is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            xs.append(x)
            heights.append(cold / demand[model])
            pred = _number(row, "predicted_ms")
            if pred is not None:
                predicted.append((x, pred / demand[model]))
        ax.bar(xs, heights, width * 0.9, color=f"C{j}", label=config)
        tallest = max([tallest, *heights])
        if predicted:
            px, py = zip(*predicted, strict=True)
            ax.scatter(px, py, marker="_", s=120, color="black", zorder=3, label="predicted" if j == 0 else None)
    for i, model in enumerate(models):
        floor = warm[model]
        if floor is not None:
            ax.hlines(floor / demand[model], i - 0.42, i + 0.42, colors="grey", linestyles=":", zorder=2,
                      label="warm (forward alone)" if i == 0 else "_nolegend_")  # fmt: skip
    ax.set_xticks(range(len(models)), models, rotation=20)
    ax.set_ylabel("cold latency / On-Demand's")
    ax.set_ylim(0, tallest * 1.1)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncol=len(configs) + 2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    gpu = rows[0].get("gpu_name", "") if rows else ""
    ax.set_title(title or f"Cold inference, batch 1{f', {gpu}' if gpu else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw(paths: Sequence[Path], path: Path, title: str = "") -> Path:
    """`plot_fig10` of the rows of every table CSV in `paths` (the `plot_files.Draw` of this module)."""
    return plot_fig10([row for p in paths for row in read_table(p)], path, title)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; see the module docstring."""
    return plot_main(argv, "benchmark.fig10_plot", __doc__ or "", draw, TableError)


if __name__ == "__main__":
    sys.exit(main())
