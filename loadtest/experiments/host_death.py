r"""One engine host killed under load: how long its GPU's models are out, and whether the other GPUs notice.

    python3 -m loadtest.experiments.host_death --model bert-base --instances 20 --engines deepplan+pt \
        --rate 100 --duration-s 20 --kill-at-s 8 --kill-gpu 0 --budget 2GiB --out results/host_death

One point of the Fig. 12 flow (`loadtest.experiments.sweep`: N instances round-robin over the GPUs, engine hosts,
the real ``tritonserver``, Locust open loop), with a fault: ``--kill-at-s`` seconds after Locust starts, the
engine host of GPU ``--kill-gpu`` gets ``--signal`` (SEGV by default, as a crash in a native library would).
Its front ends then start a new host, which registers their models again; the other GPUs' hosts run on.

Per GPU (``host_death.csv`` / ``.json``, one row each; time 0 = the schedule's start):

- ``outage_s``: from the kill to the first successful answer to a request sent after it; ``last_model_back_s``: to
  the last model's first such answer (a new host registers the models again one after the other);
- ``max_gap_s``: the longest time without a successful answer, from the last one before the kill on (a freeze of
  a GPU whose host did not die shows here);
- ``failed_after_kill``: requests that failed from the kill on (in flight at the kill, or sent to the lost host);
- ``models_recovered`` of ``models_asked_after_kill``: models that answered a request sent after the kill;
- latency of what was sent before and after the kill.

Also written: ``host_death.png`` (every request's latency against its completion time, per GPU, the kill marked)
and, under ``run/``, the point's requests.csv, summary.json, Locust and server logs. The JSON says whether the
server log shows the lost host's stacks (``Fatal Python error``) and the front ends' ``started engine host ...
(its host was lost)`` line, whether the new host was the lost one's standby (``standby_woken``), and
(``recovery``) how long each model's set-up in the new host took, per phase.
Exit code 0 when the point ran and the killed GPU recovered, 1 otherwise, 2 on bad options.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from deepplan_backend.runtime.answer import laps_text, parse_laps  # noqa: E402
from loadtest.experiments.cli import add_common_arguments, check_common  # noqa: E402
from loadtest.experiments.devices import Devices, resolve_devices, target_gpu  # noqa: E402
from loadtest.experiments.point import point_env, run_point, synthetic_point  # noqa: E402
from loadtest.experiments.progress import say  # noqa: E402
from loadtest.experiments.table import now_iso, write_rows  # noqa: E402
from loadtest.results import RequestRecord, percentile, read_log  # noqa: E402

if TYPE_CHECKING:
    from deepplan_backend import serve

NAME = "host_death"
COLUMNS = (
    "gpu",
    "killed",
    "models",
    "requests",
    "requests_after_kill",
    "failed_after_kill",
    "outage_s",
    "last_model_back_s",
    "max_gap_s",
    "p99_before_ms",
    "p99_after_ms",
    "max_after_ms",
    "models_asked_after_kill",
    "models_recovered",
    "first_error",
)
SIGNALS = {"SEGV": signal.SIGSEGV, "KILL": signal.SIGKILL, "ABRT": signal.SIGABRT}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line; one engine variant (the first of ``--engines``)."""
    p = argparse.ArgumentParser(prog="python3 -m loadtest.experiments.host_death", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="bert-base", help="zoo model served by every instance (default bert-base)")
    p.add_argument("--instances", type=int, default=20, help="instances, round-robin over the GPUs (default 20)")
    p.add_argument("--duration-s", type=float, default=20.0, help="length of the schedule, s (default 20)")
    p.add_argument(
        "--kill-at-s",
        type=float,
        default=8.0,
        help="kill this long after Locust's process starts (default 8; its schedule starts a moment later, and the "
        "results give the kill's time on the schedule's clock)",
    )
    p.add_argument("--kill-gpu", type=int, default=0, help="the GPU whose engine host dies (default 0; CPU: 0)")
    p.add_argument("--signal", choices=sorted(SIGNALS), default="SEGV", help="signal sent to it (default SEGV)")
    add_common_arguments(p)
    args = p.parse_args(argv)
    check_common(p, args, [args.model])
    if args.instances < 1 or args.duration_s <= 0:
        p.error("--instances must be >= 1 and --duration-s > 0")
    if not 0 < args.kill_at_s < args.duration_s:
        p.error("--kill-at-s must fall inside the schedule (0 < kill-at-s < duration-s)")
    if any(pair.split("=", 1)[0] == "process" and pair != "process=shared" for pair in args.param):
        p.error("engine hosts exist with process=shared only")
    return args


# ---- the fault ---------------------------------------------------------------------------------------------------


def engine_host_pid(server_pid: int, gpu: int) -> int | None:
    """The pid of the engine host serving `gpu` for the ``tritonserver`` with pid `server_pid`, if one runs.

    The process listening where that server's front ends connect (a standby has the same command line).
    """
    from deepplan_backend.hosting.host_client import listener_pid, socket_path
    from deepplan_backend.runtime.residency import server_state_dir

    return listener_pid(socket_path(server_state_dir(server_pid), gpu))


@dataclass
class Fault:
    """Kills one GPU's engine host `at_s` after Locust starts (`run_point`'s ``during``); what it did."""

    gpu: int
    at_s: float
    signum: int
    pid: int | None = None
    unix_s: float | None = None
    error: str = ""

    def __call__(self, server: serve.TritonServer) -> None:
        """Wait `at_s`, then signal the host (errors are recorded, not raised: the point still ends cleanly)."""
        time.sleep(self.at_s)
        if server.pid is None:
            self.error = "the server is not running"
            return
        self.pid = engine_host_pid(server.pid, self.gpu)
        if self.pid is None:
            self.error = f"no engine host for GPU {self.gpu} (engine hosts serve process=shared models only)"
            return
        self.unix_s = time.time()
        try:
            os.kill(self.pid, self.signum)
        except ProcessLookupError:
            self.error = f"engine host pid {self.pid} was gone before the kill"
        say(f"  sent {signal.Signals(self.signum).name} to engine host pid {self.pid} (GPU {self.gpu})")


# ---- analysis ----------------------------------------------------------------------------------------------------


def _done_s(r: RequestRecord) -> float:
    return r.send_s + r.latency_ms / 1000.0


def gpu_rows(
    records: Sequence[RequestRecord], gpu_of: Mapping[str, str], kill_s: float, killed: str
) -> list[dict[str, Any]]:
    """One row per GPU (`COLUMNS`) from the request log, the kill at `kill_s` on the schedule's clock."""
    rows = []
    for gpu in sorted(set(gpu_of.values())):
        mine = sorted((r for r in records if gpu_of.get(r.model) == gpu), key=_done_s)
        after = [r for r in mine if _done_s(r) >= kill_s]
        sent_after = [r for r in mine if r.send_s >= kill_s]
        answered_after = [r for r in sent_after if r.ok]
        ok_done = [_done_s(r) for r in mine if r.ok]
        before = [t for t in ok_done if t < kill_s]
        marks = [before[-1] if before else kill_s] + [t for t in ok_done if t >= kill_s]
        end = max((_done_s(r) for r in mine), default=kill_s)
        gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)] + [end - marks[-1]]
        failed = [r for r in after if not r.ok]
        models_asked = {r.model for r in sent_after}
        back: dict[str, float] = {}  # model -> its first answer to a request sent after the kill
        for r in answered_after:  # in completion order: the first one seen is the model's first
            back.setdefault(r.model, _done_s(r))
        rows.append(
            {
                "gpu": gpu,
                "killed": gpu == killed,
                "models": sum(1 for g in gpu_of.values() if g == gpu),
                "requests": len(mine),
                "requests_after_kill": len(sent_after),
                "failed_after_kill": len(failed),
                "outage_s": min(back.values()) - kill_s if back else None,
                "last_model_back_s": max(back.values()) - kill_s if back else None,
                "max_gap_s": max(gaps),
                "p99_before_ms": percentile([r.latency_ms for r in mine if r.ok and r.send_s < kill_s], 99),
                "p99_after_ms": percentile([r.latency_ms for r in answered_after], 99),
                "max_after_ms": max((r.latency_ms for r in answered_after), default=None),
                "models_asked_after_kill": len(models_asked),
                "models_recovered": len(back),
                "first_error": failed[0].error[:200] if failed else "",
            }
        )
    return rows


def plot_host_death(
    records: Sequence[RequestRecord], gpu_of: Mapping[str, str], kill_s: float, path: Path, title: str
) -> Path:
    """Every request's latency against its completion time, one colour per GPU, failures as crosses."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for gpu in sorted(set(gpu_of.values())):
        mine = [r for r in records if gpu_of.get(r.model) == gpu]
        ok = [r for r in mine if r.ok]
        (dots,) = ax.plot([_done_s(r) for r in ok], [r.latency_ms for r in ok], ".", ms=3, label=f"GPU {gpu}")
        bad = [r for r in mine if not r.ok]
        if bad:
            ax.plot([_done_s(r) for r in bad], [r.latency_ms for r in bad], "x", color=dots.get_color())
    ax.axvline(kill_s, color="red", linestyle="--", label="engine host killed")
    ax.set_yscale("log")
    ax.set_xlabel("completion time since the schedule's start (s); crosses: failed requests")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---- the run -----------------------------------------------------------------------------------------------------


_SETUP_AGAIN = re.compile(r"registered again with engine host pid \d+, set up in ([\d.]+) ms \(([^)]*)\)")
_HOST_WEIGHTS = re.compile(
    r"host weights of (\S+) \(\w+\) (prepared in image|mapped from image|prepared)[^:]*: (.*) ms"
)


def recovery_setups(log: str) -> dict[str, Any]:
    """The re-registrations in a server log: how many, and their set-up time (ms) in total and per phase.

    Each front end of the lost host logs one ``registered again ... set up in X ms (phase Y, ...)`` line when its
    model is back; the phases say where a recovery's time goes (host weights, plan, engine, warm-up).
    """
    totals: list[float] = []
    phases: dict[str, list[float]] = {}
    for match in _SETUP_AGAIN.finditer(log):
        totals.append(float(match.group(1)))
        for name, value in parse_laps(match.group(2)).items():
            phases.setdefault(name, []).append(value)
    # Every host's host-weights line, in log order: the replacement's says whether it mapped the dead host's image.
    weights = [{"model": m[1], "origin": m[2], "laps_ms": parse_laps(m[3])} for m in _HOST_WEIGHTS.finditer(log)]
    if not totals:
        return {"models_set_up_again": 0, "host_weights": weights}
    return {
        "models_set_up_again": len(totals),
        "setup_ms_median": percentile(totals, 50),
        "setup_ms_max": max(totals),
        "setup_ms_sum": sum(totals),
        "setup_phase_ms_median": {k: percentile(v, 50) for k, v in phases.items()},
        # The slowest of each phase: the new host's one-time costs (its CUDA context in `devices`, the image's
        # mapping in `weights`) fall on the first model to register, which the medians hide.
        "setup_phase_ms_max": {k: max(v) for k, v in phases.items()},
        "host_weights": weights,
    }


def gpu_names(names: Sequence[str], dev: Devices) -> dict[str, str]:
    """Model name -> the GPU its engine host serves it on (`target_gpu`, as `build_repository` places them)."""
    if not dev.gpu_ids:
        return dict.fromkeys(names, "0")  # CPU: one host, "GPU 0"
    return {name: str(target_gpu(i, dev)) for i, name in enumerate(names)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the point; see the module docstring."""
    args = parse_args(argv)
    out: Path = args.out
    try:
        dev = resolve_devices(args.devices)
    except ValueError as exc:
        say(f"error: {exc}")
        return 2
    if dev.gpu_ids and args.kill_gpu not in dev.gpu_ids:
        say(f"error: --kill-gpu {args.kill_gpu} is not among the GPUs used ({list(dev.gpu_ids)})")
        return 2
    if not dev.gpu_ids and args.kill_gpu != 0:
        say("error: on the CPU there is one engine host: --kill-gpu 0")
        return 2
    engine = args.engines[0]
    where = dev.where
    say(f"host death: {args.instances} x {args.model} ({engine}) on {where}, {args.rate:g} req/s for "
        f"{args.duration_s:g} s; SIG{args.signal} to GPU {args.kill_gpu}'s host at {args.kill_at_s:g} s")  # fmt: skip
    plans, tmp, mem = point_env(out)
    fault = Fault(args.kill_gpu, args.kill_at_s, SIGNALS[args.signal])
    with tmp, mem:
        repo, names, locust_args = synthetic_point(
            args, engine, args.instances, dev, plans, Path(tmp.name), Path(mem.name) / "run"
        )
        res = run_point(
            repo,
            names,
            locust_args,
            out / "run",
            ready_timeout_s=args.ready_timeout,
            locust_timeout_s=args.duration_s + args.drain_s + 120.0,
            protocol=args.protocol,
            during=fault,
        )
    error = res.error or fault.error
    doc: dict[str, Any] = {
        "experiment": NAME,
        "argv": list(sys.argv if argv is None else argv),
        "date": now_iso(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "gpu_name": dev.gpu_name,
        "engine": engine,
        "killed_pid": fault.pid,
        "error": error,
    }
    if error or res.summary is None or fault.unix_s is None:
        say(f"FAILED: {error or 'no kill was made'}")
        write_rows([], out / f"{NAME}.csv", doc, COLUMNS)
        return 1
    kill_s = fault.unix_s - float(res.summary["run"]["start_unix_s"])
    log = (out / "run" / "server.log").read_text(errors="replace")
    doc.update(
        kill_s=kill_s,
        host_lost_logged="(its host was lost)" in log,
        standby_woken="woke standby engine host" in log,
        fatal_stack_logged="Fatal Python error" in log,
        recovery=recovery_setups(log),
    )
    records = read_log(out / "run" / "requests.csv")
    gpu_of = gpu_names(names, dev)
    rows = gpu_rows(records, gpu_of, kill_s, str(args.kill_gpu))
    csv_path, json_path = write_rows(rows, out / f"{NAME}.csv", doc, COLUMNS)
    title = f"{args.instances} x {args.model} ({engine}), {args.rate:g} req/s, {where}: GPU {args.kill_gpu}'s host dies"
    png = plot_host_death(records, gpu_of, kill_s, out / f"{NAME}.png", title)
    say(f"killed engine host pid {fault.pid} at {kill_s:.2f} s; its stacks in the log: {doc['fatal_stack_logged']}, "
        f"replacement logged: {doc['host_lost_logged']}, standby woken: {doc['standby_woken']}")  # fmt: skip
    again = doc["recovery"]
    if again["models_set_up_again"]:
        phases = laps_text(again["setup_phase_ms_median"])
        say(f"  {again['models_set_up_again']} models set up again: median {again['setup_ms_median']:.0f} ms "
            f"({phases}), max {again['setup_ms_max']:.0f} ms, {again['setup_ms_sum'] / 1e3:.1f} s in all")  # fmt: skip
    for r in rows:
        outage = "never" if r["outage_s"] is None else f"{r['outage_s']:.2f} s"
        which = f"GPU {r['gpu']}{' (killed)' if r['killed'] else ''}"
        say(
            f"  {which}: outage {outage} (last model back {r['last_model_back_s'] or math.nan:.2f} s), "
            f"longest gap {r['max_gap_s']:.2f} s, "
            f"{r['failed_after_kill']} of {r['requests_after_kill']} failed after the kill, "
            f"{r['models_recovered']}/{r['models_asked_after_kill']} models answered again"
        )
    say(f"wrote {csv_path}, {json_path}, {png}")
    killed = next(r for r in rows if r["killed"])
    recovered = killed["outage_s"] is not None and killed["models_recovered"] == killed["models_asked_after_kill"]
    return 0 if recovered else 1


if __name__ == "__main__":
    sys.exit(main())
