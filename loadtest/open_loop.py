"""Open-loop replay of an arrival schedule inside Locust.

One Locust user (``fixed_count = 1``) runs a dispatcher: it sleeps until each arrival time and spawns a
greenlet per request, so arrivals never wait for responses (Locust's own wait times are closed loop).
Each request fires ``environment.events.request`` (Locust's stats, ``--csv``) and is appended to the
per-request log; when the schedule is done and the outstanding requests have drained (or after
``--drain-s``), the log, summary and plots are written to ``--results-dir`` and the runner is stopped
(quit when headless; stopped in the web UI, which then still shows the stats).

Importing this module calls ``grpc.experimental.gevent.init_gevent()``: gRPC's own threads would
otherwise block the gevent loop, and it must happen before any channel exists.

Single-process only: in ``--master``/``--worker`` mode every worker would replay the whole schedule.
"""

from __future__ import annotations

import logging
import time
from argparse import Namespace
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import grpc.experimental.gevent
import numpy as np
from locust import User, events, task
from locust.env import Environment
from locust.runners import LocalRunner
from locust.stats import CSV_STATS_INTERVAL_SEC

from loadtest.plots import write_plots
from loadtest.results import (
    LOG_FILE,
    SUMMARY_FILE,
    RequestRecord,
    read_log,
    summarize,
    write_log,
    write_summary,
)
from loadtest.schedule import Schedule
from loadtest.triton_target import PROTOCOLS, TargetError, TritonTarget

grpc.experimental.gevent.init_gevent()

LOGGER = logging.getLogger("loadtest")


def _env(name: str) -> str:
    return "LOCUST_" + name.upper().replace("-", "_")


def add_argument(parser: Any, flag: str, **kwargs: Any) -> None:
    """Add a custom Locust option whose env var is ``LOCUST_<NAME>``; the help names the variable."""
    env_var = _env(flag.lstrip("-"))
    kwargs["help"] = f"{kwargs.get('help', '')} [env {env_var}]"
    parser.add_argument(flag, env_var=env_var, **kwargs)


def add_common_arguments(parser: Any) -> None:
    """Options shared by every open-loop Locust file.

    Added on the parser itself, not a group: Locust shows only those in its web UI. Defaults are never
    None because the web UI converts a submitted value with the type of the current one.
    """

    def arg(flag: str, **kwargs: Any) -> None:
        add_argument(parser, flag, **kwargs)

    arg("--rate", type=float, default=100.0, help="target request rate in req/s (default 100)")
    arg("--instances", type=int, default=20, help="number of model instances N (default 20)")
    arg(
        "--model-prefix",
        type=str,
        default="bert-base-",
        help="models are <prefix>0 .. <prefix>N-1 unless --models is given (default bert-base-)",
    )
    arg(
        "--models",
        type=str,
        default="",
        help="explicit comma-separated model list, or @FILE with one name per line; instance i = i-th name",
    )
    arg("--slo-ms", type=float, default=100.0, help="latency SLO for goodput, in ms (default 100)")
    arg("--protocol", type=str, default="grpc", choices=PROTOCOLS, help="Triton client protocol (default grpc)")
    arg(
        "--triton-url",
        type=str,
        default="",
        help="Triton host:port (default localhost:8001 for grpc, localhost:8000 for http)",
    )
    arg(
        "--results-dir",
        type=str,
        default="results/loadtest",
        help=f"folder for {LOG_FILE}, {SUMMARY_FILE} and plots (default results/loadtest)",
    )
    arg("--seed", type=int, default=0, help="seed of the arrival schedule and request data (default 0)")
    arg("--seq-len", type=int, default=384, help="length of dynamic non-batch input dims (default 384)")
    arg(
        "--drain-s",
        type=float,
        default=30.0,
        help="after the last arrival, wait at most this long for outstanding responses (default 30)",
    )
    arg("--request-timeout-s", type=float, default=60.0, help="per-request client timeout (default 60)")
    arg(
        "--warmup-s",
        type=float,
        default=0.0,
        help="requests sent before this are left out of the summary's steady-state figures (default 0)",
    )


@dataclass(frozen=True)
class OpenLoopOptions:
    """The common options, typed and validated."""

    rate: float
    instances: int
    models: tuple[str, ...]
    slo_ms: float
    protocol: str
    triton_url: str
    results_dir: Path
    seed: int
    seq_len: int
    drain_s: float
    request_timeout_s: float
    warmup_s: float = 0.0


def resolve_models(models: str, prefix: str, instances: int) -> tuple[str, ...]:
    """Model name of each instance: the explicit list (``a,b`` or ``@file``) or ``<prefix>0..N-1``."""
    if models.startswith("@"):
        path = Path(models[1:]).expanduser()
        if not path.is_file():
            raise ValueError(f"--models {models}: file {path} not found")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [m.strip() for m in models.split(",") if m.strip()]
    if names:
        return tuple(names)
    if instances <= 0:
        raise ValueError(f"--instances must be > 0, got {instances}")
    return tuple(f"{prefix}{i}" for i in range(instances))


def options_from(parsed: Namespace) -> OpenLoopOptions:
    """Read and check the common options (types re-applied: the web UI may hand them back as strings)."""
    protocol = str(parsed.protocol)
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
    models = resolve_models(str(parsed.models), str(parsed.model_prefix), int(parsed.instances))
    opts = OpenLoopOptions(
        rate=float(parsed.rate),
        instances=len(models),
        models=models,
        slo_ms=float(parsed.slo_ms),
        protocol=protocol,
        triton_url=str(parsed.triton_url),
        results_dir=Path(str(parsed.results_dir)),
        seed=int(parsed.seed),
        seq_len=int(parsed.seq_len),
        drain_s=float(parsed.drain_s),
        request_timeout_s=float(parsed.request_timeout_s),
        warmup_s=float(parsed.warmup_s),
    )
    if opts.rate <= 0 or opts.slo_ms <= 0 or opts.drain_s < 0 or opts.warmup_s < 0:
        raise ValueError(
            f"--rate ({opts.rate}) and --slo-ms ({opts.slo_ms}) must be > 0, --drain-s and --warmup-s >= 0"
        )
    return opts


class ReplayRun:
    """One replay of a schedule: dispatch, record, drain, write results."""

    def __init__(
        self,
        environment: Environment,
        opts: OpenLoopOptions,
        schedule: Schedule,
        target: TritonTarget,
        run_info: dict[str, Any],
    ) -> None:
        """Prepare a replay; nothing is sent before :meth:`dispatch`."""
        if schedule.num_instances != len(opts.models):
            raise ValueError(f"schedule has {schedule.num_instances} instances but {len(opts.models)} models")
        self.environment = environment
        self.opts = opts
        self.schedule = schedule
        self.target = target
        self.run_info = run_info
        self.records: list[RequestRecord] = []
        # Requests sent and not answered yet: id -> (model, scheduled_s, send_s, perf_counter at send).
        self._pending: dict[int, tuple[str, float, float, float]] = {}
        self.group = gevent.pool.Group()
        self.dispatched = 0
        self.unanswered = 0
        self.completed = False
        self._written = False
        self._t0 = 0.0

    def dispatch(self) -> None:
        """Send every request at its scheduled time without waiting for earlier ones."""
        times = self.schedule.times_s
        instances = self.schedule.instances
        self._t0 = time.perf_counter()
        self.run_info["start_unix_s"] = time.time()
        for i in range(len(self.schedule)):
            delay = self._t0 + times[i] - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            self.group.spawn(self._send, i, self.opts.models[instances[i]], float(times[i]))
            self.dispatched += 1
        # Run to the schedule's end even if the last arrival came earlier, so rates are per full duration.
        rest = self._t0 + self.schedule.duration_s - time.perf_counter()
        if rest > 0:
            gevent.sleep(rest)

    def _send(self, request_id: int, model: str, scheduled_s: float) -> None:
        start = time.perf_counter()
        send_s = start - self._t0
        self._pending[request_id] = (model, scheduled_s, send_s, start)
        exception: Exception | None = None
        cold, provision, size = None, None, 0
        try:
            outcome = self.target.infer(model)
            cold, provision, size = outcome.cold_start, outcome.provision_ms, outcome.response_bytes
        except Exception as exc:  # noqa: BLE001 - every failure is a logged, counted request
            exception = exc
        latency_ms = (time.perf_counter() - start) * 1000.0
        if self._pending.pop(request_id, None) is None:
            return  # already logged as unanswered by abandon_pending()
        self.records.append(
            RequestRecord(
                send_s,
                scheduled_s,
                model,
                latency_ms,
                exception is None,
                "" if exception is None else f"{type(exception).__name__}: {exception}",
                cold,
                provision,
            )
        )
        self.environment.events.request.fire(
            request_type=self.opts.protocol,
            name=model,
            response_time=latency_ms,
            response_length=size,
            exception=exception,
            context={"cold_start": cold, "provision_ms": provision},
        )

    def drain(self) -> None:
        """Wait up to ``drain_s`` for outstanding requests, then log the rest as failed."""
        self.group.join(timeout=self.opts.drain_s)
        self.completed = True
        self.abandon_pending(f"no response within --drain-s {self.opts.drain_s:g} s after the last arrival")

    def abandon_pending(self, reason: str) -> None:
        """Log every unanswered request as an error (so goodput counts it as a miss) and stop waiting."""
        now = time.perf_counter()
        for model, scheduled_s, send_s, start in self._pending.values():
            latency_ms = (now - start) * 1000.0
            self.records.append(RequestRecord(send_s, scheduled_s, model, latency_ms, False, reason))
            self.environment.events.request.fire(
                request_type=self.opts.protocol,
                name=model,
                response_time=latency_ms,
                response_length=0,
                exception=TimeoutError(reason),
                context={},
            )
        self.unanswered += len(self._pending)
        self._pending.clear()
        self.group.kill(block=False)

    def finish(self) -> Path | None:
        """Write log, summary and plots once; returns the summary's path (None if nothing was sent)."""
        if self._written or not self.dispatched:
            return None
        self._written = True
        records = sorted(self.records, key=lambda r: r.send_s)
        out = self.opts.results_dir
        duration, scheduled = self.schedule.duration_s, len(self.schedule)
        if not self.completed:
            # Stopped early: rates are over the time it ran, against what was scheduled until then.
            duration = max(1e-3, time.perf_counter() - self._t0)
            scheduled = int(np.searchsorted(self.schedule.times_s, duration))
        # Summarize what the log file holds (as rounded there), so an offline recompute matches exactly.
        records = read_log(write_log(out / LOG_FILE, records))
        info = {
            **self.run_info,
            "completed": self.completed,
            "dispatched": self.dispatched,
            "unanswered": self.unanswered,
            "spawned_not_sent": self.dispatched - len(records),  # killed by an early stop before sending
            "schedule_requests": len(self.schedule),
            "schedule_duration_s": self.schedule.duration_s,
        }
        summary = summarize(records, self.opts.slo_ms, duration, self.opts.rate, scheduled, info, self.opts.warmup_s)
        path = write_summary(out / SUMMARY_FILE, summary)
        write_plots(records, out, self.opts.slo_ms, duration)
        LOGGER.info(
            "open-loop results in %s: %d sent, p99 %s ms, goodput %s %%, cold-start rate %s",
            out,
            summary["requests"],
            summary["p99_ms"],
            summary["goodput_pct"],
            summary["cold_start_rate"],
        )
        return path


_ACTIVE: dict[int, ReplayRun] = {}  # runs by id(environment): test_stop must find a run stopped early


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    run = _ACTIVE.pop(id(environment), None)
    if run is not None:
        run.abandon_pending("test stopped before the response")  # Ctrl-C, --run-time, the UI's stop
        run.finish()


@events.init.add_listener
def _refuse_distributed(environment: Environment, **_: Any) -> None:
    if environment.runner is not None and not isinstance(environment.runner, LocalRunner):
        raise SystemExit("loadtest: open-loop replay runs in one process; drop --master/--worker")


def end_test(environment: Environment) -> None:
    """End the test once the schedule is done.

    Headless: quit (the process exits with Locust's usual code). Web UI: stop, so the UI keeps showing the
    results and a new test can be started; with ``--autostart --autoquit N``, quit N seconds later (Locust
    itself applies ``--autoquit`` only after ``--run-time``).
    """
    runner, parsed = environment.runner, environment.parsed_options
    if runner is None:
        return
    if parsed is None or parsed.headless:
        runner.quit()
        return
    runner.stop()
    autoquit = int(getattr(parsed, "autoquit", -1))
    if getattr(parsed, "autostart", False) and autoquit >= 0:
        gevent.sleep(autoquit)
        runner.quit()
        if environment.web_ui is not None:
            environment.web_ui.stop()


class OpenLoopUser(User):
    """Base user: subclasses say how to build the schedule; the single instance replays it once."""

    abstract = True
    fixed_count = 1

    def build_schedule(self, opts: OpenLoopOptions, parsed: Namespace) -> tuple[Schedule, dict[str, Any]]:
        """Return the schedule and a description of it for the summary."""
        raise NotImplementedError

    def _stop_test(self) -> None:
        # From another greenlet: stopping kills the users, this one included.
        gevent.spawn(end_test, self.environment)

    @task
    def replay(self) -> None:
        """Build the schedule, discover the models, replay, drain, write results and stop the test."""
        parsed = self.environment.parsed_options or Namespace()
        try:
            opts = options_from(parsed)
            schedule, info = self.build_schedule(opts, parsed)
            target = TritonTarget(
                opts.protocol, opts.triton_url or None, opts.seq_len, opts.request_timeout_s, seed=opts.seed
            )
            target.discover(sorted(set(opts.models)))
        except (ValueError, TargetError) as exc:
            LOGGER.error("loadtest: %s", exc)
            self.environment.process_exit_code = 2
            self._stop_test()
            gevent.sleep(3600)  # wait here to be stopped; returning would restart the task
            return
        run_info = {
            "schedule": schedule.description,
            "expected_rate_rps": schedule.expected_rate,
            "protocol": opts.protocol,
            "triton_url": target.url,
            "models": len(set(opts.models)),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items() if k != "models"},
            **info,
        }
        LOGGER.info("loadtest: %s; %d requests over %.1f s", schedule.description, len(schedule), schedule.duration_s)
        run = ReplayRun(self.environment, opts, schedule, target, run_info)
        _ACTIVE[id(self.environment)] = run
        run.dispatch()
        run.drain()
        _ACTIVE.pop(id(self.environment), None)
        run.finish()
        target.close()
        # Locust's --csv writer runs every CSV_STATS_INTERVAL_SEC and not at shutdown: let it see the last requests.
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.5)
        self._stop_test()
        gevent.sleep(3600)
