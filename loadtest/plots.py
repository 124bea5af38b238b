"""PNG plots of a load test from its per-request log (matplotlib, Agg backend: no display needed).

- ``latency_cdf.png``: CDF of the latencies of successful requests, SLO marked;
- ``timeline.png``: per time window, the sent rate, the p99 latency and the cold-start rate.

Usage: ``python3 -m loadtest.plots results/run/requests.csv --out results/run``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless load-generator hosts have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from loadtest.results import RequestRecord, read_log, windowed  # noqa: E402

CDF_FILE = "latency_cdf.png"
TIMELINE_FILE = "timeline.png"


def plot_latency_cdf(records: Sequence[RequestRecord], path: str | Path, slo_ms: float, title: str = "") -> Path:
    """Write the latency CDF of successful requests to ``path``."""
    path = Path(path)
    latencies = np.sort(np.array([r.latency_ms for r in records if r.ok], dtype=np.float64))
    fig, ax = plt.subplots(figsize=(6, 4))
    if latencies.size:
        ax.step(latencies, np.arange(1, latencies.size + 1) / latencies.size, where="post", label="latency")
    ax.axvline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of successful requests")
    ax.set_ylim(0, 1.01)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or f"Latency CDF ({latencies.size} requests)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_timeline(
    records: Sequence[RequestRecord],
    path: str | Path,
    slo_ms: float,
    window_s: float,
    duration_s: float | None = None,
    title: str = "",
) -> Path:
    """Write sent rate, p99 latency and cold-start rate per window of ``window_s`` seconds to ``path``."""
    path = Path(path)
    stats = windowed(records, window_s, slo_ms, duration_s)
    # Each window's value is drawn across the whole window: one more edge than values.
    edges = np.array([w.start_s for w in stats] + [stats[-1].start_s + window_s])

    def series(values: list[float | None]) -> np.ndarray:
        data = [np.nan if v is None else v for v in values]
        return np.array(data + data[-1:], dtype=np.float64)

    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    axes[0].step(edges, series([w.sent_rate_rps for w in stats]), where="post")
    axes[0].set_ylabel("sent (req/s)")
    axes[1].step(edges, series([w.p99_ms for w in stats]), where="post")
    axes[1].axhline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:g} ms")
    axes[1].set_ylabel("p99 latency (ms)")
    axes[1].legend(loc="upper right")
    axes[2].step(edges, 100.0 * series([w.cold_start_rate for w in stats]), where="post")
    axes[2].set_ylabel("cold starts (%)")
    axes[2].set_xlabel(f"time since start (s), windows of {window_s:g} s")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[0].set_title(title or "Load test over time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def default_window(duration_s: float) -> float:
    """A window giving about 60 points over the test, at least 1 s."""
    return max(1.0, duration_s / 60.0)


def write_plots(
    records: Sequence[RequestRecord],
    out_dir: str | Path,
    slo_ms: float,
    duration_s: float | None = None,
    window_s: float | None = None,
) -> list[Path]:
    """Write both plots into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    end = max(duration_s or 0.0, max((r.send_s for r in records), default=0.0), 1.0)
    window = window_s or default_window(end)
    return [
        plot_latency_cdf(records, out / CDF_FILE, slo_ms),
        plot_timeline(records, out / TIMELINE_FILE, slo_ms, window, duration_s),
    ]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: plots from a per-request log."""
    parser = argparse.ArgumentParser(prog="python3 -m loadtest.plots", description="Plot a load test's request log.")
    parser.add_argument("log", type=Path, help="the test's requests.csv")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs, default: the log's folder")
    parser.add_argument("--slo-ms", type=float, default=100.0, help="latency SLO in ms, default 100")
    parser.add_argument("--window-s", type=float, default=None, help="timeline window, default duration/60")
    args = parser.parse_args(argv)
    for path in write_plots(read_log(args.log), args.out or args.log.parent, args.slo_ms, window_s=args.window_s):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
