"""One served model: host weights, plan, engine and residency registration, from its settings (`serve_settings`).

`deepplan_backend/model.py` (the Triton adapter) only converts between Triton and this module:

    cfg = ServeSettings.from_parameters(params, model_dir=...)    # serve_settings: ConfigError names the parameter
    served = ServedModel(cfg, key="bert_0_0", max_batch_size=8)   # host weights + plan; device left empty
    inputs = served.validate({"input_ids": array, ...})              # RequestError with a clear message
    output, cold, provision_ms = served.infer(inputs)                 # cold start per plan, or warm
    answers = served.answer([arrays, ...])                            # Triton's requests: validate, batch, run

Nothing here imports Triton, so it is usable (and tested) on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch

from . import spare_memory
from .answer import Answer, ModelStatus
from .engine import ColdStartEngine, InferenceResult
from .path_policy import PathPolicyError
from .plan import Plan, PlanError
from .plan_repository import load_plan, plan_path, save_plan
from .prepared import PreparedModel, gpu_name, prepare_shared, release_shared
from .residency import WAIT_TIMEOUT_S, Residency, RoomBusy
from .schedules import schedule_for
from .serve_settings import ConfigError, ServeSettings
from .transfer import DeviceError, resolve_devices
from .weights_image import images_enabled
from .zoo import IMAGE_SIZE


class RequestError(ValueError):
    """One request is invalid (shape, dtype, missing input, ids out of range, batch or sequence too long)."""


def choose_devices(settings: ServeSettings, instance_device: int | None) -> list[torch.device]:
    """Explicit ids as given; ``auto``: the instance's GPU plus every GPU it has peer access to (PT), or CPU."""
    if settings.devices is not None:
        return resolve_devices(list(settings.devices))
    if not torch.cuda.is_available():
        return resolve_devices(None)
    target = instance_device if instance_device is not None else (settings.target_gpu or 0)
    if target >= torch.cuda.device_count():
        raise ConfigError(f"target GPU {target} does not exist ({torch.cuda.device_count()} visible)")
    if settings.engine == "demand":
        return resolve_devices([target])
    peers = [
        d for d in range(torch.cuda.device_count()) if d != target and torch.cuda.can_device_access_peer(target, d)
    ]
    return resolve_devices([target, *peers])


def default_budget(device: torch.device, reserve: int) -> int:
    """The device's memory minus `reserve` (host memory for CPU mode)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(0, int(total) - reserve)


def plan_or_make(
    prepared: PreparedModel,
    settings: ServeSettings,
    devices: list[torch.device],
    device_lock: contextlib.AbstractContextManager[object] | None = None,
) -> tuple[Plan, bool]:
    """The valid plan for this model on this GPU from the plan repository, or a fresh one (saved there).

    Several instances starting at once plan once: planning holds a lock file per plan key. Making a plan profiles
    on the devices, which then must be this model's alone: under `device_lock` (an engine host's device lock).
    Reading one is not device work, and does not wait for the device thread's requests.
    Returns (plan, made_now).
    """
    from planner.device_planning import Sampling, plan_on_devices

    graphs = settings.graphs and devices[0].type == "cuda"  # graphs are ignored on CPU, and so is their regime
    key = prepared.plan_key(settings.plan_batch, settings.seq_len, gpu_name(devices[0]), graphs=graphs)
    repo = settings.plan_repository
    repo.mkdir(parents=True, exist_ok=True)
    counts = sorted({1, len(devices)})

    def usable(plan: Plan) -> bool:
        return all(any(v.engine == "deepplan" and v.num_devices == n for v in plan.variants) for n in counts)

    # A stable digest (not hash(), which is salted per process): every stub must take the same lock.
    digest = hashlib.sha256(repr(dataclasses.astuple(key)).encode())
    lock_path = repo / f".lock-{digest.hexdigest()[:16]}"
    if settings.path_policy is not None:  # a planted symlink or FIFO in the plan repository is refused, not opened
        for path, what in ((plan_path(repo, key), "plan file"), (lock_path, "plan lock file")):
            try:
                settings.path_policy.check(path, what, must_exist=False)
            except PathPolicyError as exc:
                raise ConfigError(str(exc)) from None
            if path.is_symlink() or (path.exists() and not path.is_file()):
                raise ConfigError(f"{what} {path} is not a regular file; remove it (the plan is made again)")
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with contextlib.suppress(PlanError):  # not found, stale, foreign or corrupt: plan again
                plan = load_plan(repo, key, prepared.fingerprint)
                if usable(plan):
                    return plan, False
            # Few samples: this runs while Triton loads the model.
            sampling = Sampling(warmup=1, repeats=3, check_warmup=1, check_repeats=3)
            with device_lock if device_lock is not None else contextlib.nullcontext():
                plan, _ = plan_on_devices(
                    prepared, devices, counts, settings.plan_batch, settings.seq_len, graphs, sampling, progress=False
                )
            save_plan(repo, plan)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # profiling's scratch memory goes back to the driver, not held by the cache
            return plan, True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_WARMED: set[tuple] = set()
"""Kinds of model (name, dtype, engine, seq_len, graphs, devices) this process warmed up (`ServedModel._warm_up`)."""
_WARMED_LOCK = threading.Lock()
WARM_UP_ROOM_TIMEOUT_S = 30.0
"""How long a load's warm-up waits for room held by other requests before it gives up (the load goes on).

Models loading together wait for each other's warm-ups, which hold their room from the cold to the warm request:
an engine host's device thread runs them one by one, ~0.3 s each for BERT-Base with its captures (200 models on
4 H100s were ready in 69 s), and a waiter is not served in order. A warm-up given up costs the model's first
warm request under load its graph captures."""
T = TypeVar("T")
DeviceRunner = Callable[[Callable[[], Any]], Any]
"""Runs the device part of a request somewhere (an engine host: on its single device thread)."""


def _lap(laps: dict[str, float], name: str, since: float) -> float:
    """Record the ms since `since` as `laps[name]`; now, for the next lap."""
    now = time.perf_counter()
    laps[name] = (now - since) * 1e3
    return now


def _run_here(fn: Callable[[], T]) -> T:
    return fn()


def _warms_per_model(engine: ColdStartEngine) -> bool:
    """Whether every model warms up at load, not only the first of its kind: its CUDA graphs are its own."""
    return engine.graphs


class ServedModel:
    """Config -> prepared model + plan + engine + residency registration; `infer` answers one batch."""

    def __init__(
        self,
        settings: ServeSettings,
        key: str,
        max_batch_size: int,
        instance_device: int | None = None,
        residency: Residency | None = None,
        exec_lock: threading.Lock | None = None,
        device_runner: DeviceRunner | None = None,
        warm_up: bool = True,
    ) -> None:
        """Prepare host weights and the plan and register with the residency; the device stays empty.

        `warm_up=False` leaves the load's warm-up to `warm_up_deferred` (an engine host replacing a dead one: the
        models' requests are waiting, and each would otherwise wait for every other model's warm-up too).

        `exec_lock` serialises device work with other models of this process (an engine host runs many);
        by default the model has its own. `device_runner` runs the device part of a request (an engine host
        passes its device thread); by default it runs on the caller's thread. Budget is taken inside it, right
        before the device work: a request queued behind others must not pin room it cannot use yet (under load,
        queued models held the whole budget and every request met a cold start).
        """
        self.settings = settings
        self.key = key
        self.max_batch_size = max_batch_size
        self._exec_lock = exec_lock or threading.Lock()
        # Where the set-up's time goes (ms), for the load's log line: after a host death, every model of the new
        # host sets up again inside a request's wait, so this is the recovery's breakdown too.
        self.setup_ms: dict[str, float] = {}
        mark = time.perf_counter()
        self.devices = choose_devices(settings, instance_device)
        mark = _lap(self.setup_ms, "devices", mark)  # a new process's CUDA start-up shows here
        self.residency = residency or Residency(settings.residency_dir)
        state_dir = self.residency.state_dir  # the server's: its weights images live there too
        images = state_dir / "weights" if images_enabled(state_dir) else None
        self.prepared = prepare_shared(settings.model, settings.dtype, settings.seed, image_folder=images)
        self._answered = False  # a request came (it paid the first request's one-time costs itself)
        self._closed = False
        self._warm_pending = not warm_up
        try:
            self._set_up(settings, key, mark, device_runner)
        except BaseException:  # the weights' other users keep them; this load's share goes
            release_shared(settings.model, settings.dtype, settings.seed)
            raise

    def _set_up(
        self,
        settings: ServeSettings,
        key: str,
        mark: float,
        device_runner: DeviceRunner | None,
    ) -> None:
        """`__init__` once the host weights are there: plan, engine, residency registration, warm-up."""
        mark = _lap(self.setup_ms, "weights", mark)
        self.model = self.prepared.model
        if settings.seq_len is not None and settings.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"parameter seq_len: {settings.seq_len} exceeds {self.model.name}'s maximum {self.model.max_seq_len}"
            )
        self.plan: Plan | None = None
        self.planned_now = False
        if settings.engine == "deepplan":
            # Profiling, if a plan must be made, needs the devices to itself (other models of an engine host
            # would skew its timings and could meet an out-of-memory): under the device lock.
            self.plan, self.planned_now = plan_or_make(self.prepared, settings, self.devices, self._exec_lock)
        mark = _lap(self.setup_ms, "plan", mark)
        nbytes = self.prepared.table.nbytes
        self.schedule, self.overlap = schedule_for(settings.engine, len(self.devices), nbytes, self.plan)
        self.need_bytes = self.schedule.loaded_bytes(nbytes)
        self.engine = ColdStartEngine(self.model, self.prepared.store, self.devices, graphs=settings.graphs)
        with self._exec_lock:
            try:  # one-time set-up at load, not in the first request
                self.engine.prepare(self.schedule)
            except (DeviceError, RuntimeError) as exc:  # e.g. the GPU is full right now: the first request does it
                print(f"deepplan: {key}: set-up deferred to the first request ({exc})", flush=True)
            if self.schedule.num_devices > 1:
                self.engine.copier.open_peer_links()
        mark = _lap(self.setup_ms, "engine", mark)
        self.device_name = str(self.devices[0])
        self.evictions = 0
        self._lock = threading.Lock()
        self._unreleased = False  # a request answered before its budget release (see `settle`)
        self._device_runner: DeviceRunner = device_runner or _run_here
        budget = settings.budget if settings.budget is not None else default_budget(self.devices[0], settings.reserve)
        self.residency.register(key, self.device_name, budget, self._evict)
        if not self._warm_pending:
            self._warm_up()
            _lap(self.setup_ms, "warm_up", mark)

    def warm_up_deferred(self) -> bool:
        """Run the warm-up left for later (``warm_up=False``); whether it ran.

        It does not run once a request came (that request paid the one-time costs itself) or the model is closed.
        """
        if not self._warm_pending or self._answered or self._closed:
            self._warm_pending = False
            return False
        self._warm_pending = False
        self._warm_up()
        return True

    def _warm_up(self) -> None:
        """At load: a cold and a warm request of example inputs, then evict; per model with graphs, else per kind.

        A process's first requests of a model pay one-time costs — kernels loaded on first use, library handles
        of the device thread — that are not the cold start's (on an H200: 160 ms of provisioning for a host's
        first BERT-Base, 45-84 ms first requests against ~17 ms later ones). They are paid here instead, through
        the residency like any request (so the budget holds), and the device is left empty again. Identical models
        share the kernels, so without graphs only the first of a kind warms up. With graphs (on a GPU) every model
        does: its first warm request captures its two graphs (cold, with the chunk waits; warm, without), and in
        session 9's Fig. 12 run on 2 x H200 those first warm requests took 39-54 ms (p50, against 9 ms later
        ones) and held up the requests queued behind them on the GPU (warm p99 66-90 ms at 40 BERT-Bases).
        The cold request's budget stays taken until the warm one is done (``defer_release``): the model stays in
        use, so no other model's request evicts it in between. Models load concurrently, and in session 10's
        Fig. 12 run (4 x H100, 40 BERT-Bases, room for 5 per GPU) the others' warm-ups, queued on the same device
        thread, evicted most models between their two requests: the second was a cold start again, nothing was
        captured, and the first warm requests under load captured the graphs after all (38-56 ms; caught by
        `hosting.stall_report`). A failure is reported by the first request instead.
        """
        s = self.settings
        kind = (self.model.name, s.dtype, s.engine, s.seq_len, s.graphs, tuple(str(d) for d in self.devices))
        with _WARMED_LOCK:
            if kind in _WARMED and not _warms_per_model(self.engine):
                return
            _WARMED.add(kind)
        try:
            inputs = self.model.example_inputs(1, s.seq_len)
            try:
                self._infer_timed(inputs, WARM_UP_ROOM_TIMEOUT_S, defer_release=True)
                self.infer(inputs, room_timeout_s=WARM_UP_ROOM_TIMEOUT_S)  # warm: it releases the budget
            finally:
                self.settle()  # if the warm request failed before its release

            def evict_uncounted() -> None:  # not an eviction to make room: no metric, empty device
                self._leave_device()  # another process's request may have evicted it already
                self.residency.release(self.key, 0)

            self._device_runner(evict_uncounted)
        except Exception as exc:
            with _WARMED_LOCK:
                _WARMED.discard(kind)
            print(f"deepplan: {self.key}: warm-up skipped ({type(exc).__name__}: {exc})", flush=True)

    # ---- requests -----------------------------------------------------------------------------------------------

    def validate(self, arrays: Mapping[str, np.ndarray | None]) -> dict[str, torch.Tensor]:
        """Check one request's arrays against the model; tensors for `infer`, or RequestError."""
        m = self.model
        names = m.input_names
        given = {k: v for k, v in arrays.items() if v is not None}
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise RequestError(f"unknown input(s) {', '.join(unknown)}; {m.name} takes {', '.join(names)}")
        if names[0] not in given:
            raise RequestError(f"missing required input {names[0]!r}")
        first = given[names[0]]
        if first.ndim < 1 or first.shape[0] < 1:
            raise RequestError(f"{names[0]}: needs a batch dimension, got shape {list(first.shape)}")
        batch = first.shape[0]
        if batch > self.max_batch_size:
            raise RequestError(f"batch of {batch} exceeds max_batch_size {self.max_batch_size}")
        if m.family == "resnet":
            return {"pixel_values": self._pixels(first)}
        return self._text(given)

    def _pixels(self, a: np.ndarray) -> torch.Tensor:
        if a.dtype != np.float32:
            raise RequestError(f"pixel_values: expected FP32, got {a.dtype}")
        want = (3, IMAGE_SIZE, IMAGE_SIZE)
        if a.ndim != 4 or tuple(a.shape[1:]) != want:
            raise RequestError(f"pixel_values: expected shape [B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}], got {list(a.shape)}")
        if not np.isfinite(a).all():
            raise RequestError("pixel_values: contains NaN or infinity")
        return torch.from_numpy(np.ascontiguousarray(a))

    def _text(self, given: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        m = self.model
        arrays: dict[str, np.ndarray] = {}
        for name in ("input_ids", "attention_mask"):
            a = given.get(name)
            if a is None:
                continue
            if a.dtype != np.int64:
                raise RequestError(f"{name}: expected INT64, got {a.dtype}")
            if a.ndim != 2:
                raise RequestError(f"{name}: expected shape [B, S], got {list(a.shape)}")
            if a.shape[1] > m.max_seq_len:  # before any copy or conversion
                raise RequestError(
                    f"{name}: sequence of {a.shape[1]} tokens exceeds {m.name}'s maximum {m.max_seq_len}"
                )
            arrays[name] = a
        # The checks run on the NumPy arrays: on a request's path, each PyTorch operator on a few hundred ids costs
        # its dispatch (tens of microseconds), far more than the arithmetic.
        ids = arrays["input_ids"]
        if ids.shape[1] < 1:
            raise RequestError("input_ids: empty sequence")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= m.vocab_size:
            bad = lo if lo < 0 else hi
            raise RequestError(f"input_ids: token id {bad} out of range [0, {m.vocab_size}) for {m.name}")
        mask = arrays.get("attention_mask")
        if mask is not None:
            if mask.shape != ids.shape:
                raise RequestError(f"attention_mask: shape {list(mask.shape)} differs from input_ids {list(ids.shape)}")
            if int(mask.min()) < 0 or int(mask.max()) > 1:
                raise RequestError("attention_mask: values must be 0 or 1")
        return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}

    def infer(
        self, inputs: dict[str, torch.Tensor], room_timeout_s: float = WAIT_TIMEOUT_S
    ) -> tuple[torch.Tensor, bool, float]:
        """Run one (validated, possibly batched) input: (output FP32 CPU, met a cold start, provisioning ms).

        Provisioning time covers making room (evicting others) and the cold-start request; 0 when warm. Time
        spent queued behind other requests, or waiting for room held by requests in other processes, is not in
        it (the client sees it, the provisioning does not).
        """
        output, cold, provision_ms, _ = self._infer_timed(inputs, room_timeout_s)
        return output, cold, provision_ms

    def _infer_timed(
        self, inputs: dict[str, torch.Tensor], room_timeout_s: float = WAIT_TIMEOUT_S, defer_release: bool = False
    ) -> tuple[torch.Tensor, bool, float, dict[str, float]]:
        """`infer`, plus the request's phases in ms (queue, room, evict, engine, release: see `answer.PHASES`).

        `defer_release`: leave the budget's release to `settle` (the caller answers first).
        """
        timing: dict[str, float] = {"release_ms": 0.0, "evict_ms": 0.0}

        def on_device() -> tuple[InferenceResult, float] | None:
            start = time.perf_counter()
            timing["queue_ms"] = timing.get("queue_ms", 0.0) + (start - queued) * 1e3
            acquired = start
            with self._lock:  # held from the residency check to the release: see `_run_locked`
                result = self._run_locked(inputs, timing, defer_release) if self.engine.is_resident else None
            if result is None:
                # The memory of the models this process evicts for room goes to this cold start as it is.
                with spare_memory.reusing():
                    try:  # never wait here: the device thread serves every model of its GPU
                        grant = self.residency.acquire(self.key, self.need_bytes, wait=False)
                    except RoomBusy:
                        return None
                    timing["evict_ms"] = grant.evict_ms
                    acquired = time.perf_counter()
                    with self._lock:
                        result = self._run_locked(inputs, timing, defer_release)
            end = time.perf_counter()
            timing.update(room_ms=(acquired - start) * 1e3)
            timing["engine_ms"] = (end - acquired) * 1e3 - timing["release_ms"]
            return result, (end - start) * 1e3

        deadline = time.monotonic() + room_timeout_s
        queued = time.perf_counter()
        while (done := self._device_runner(on_device)) is None:
            # Room held by requests in other processes (e.g. `process: instance` models on this GPU): wait for
            # it on the caller's thread, then queue for the device again.
            self.residency.wait_for_room(self.key, self.need_bytes, max(0.0, deadline - time.monotonic()))
            queued = time.perf_counter()
        result, elapsed_ms = done
        return result.output, result.cold, elapsed_ms if result.cold else 0.0, timing

    def _run_locked(self, inputs: dict[str, torch.Tensor], timing: dict[str, float], defer: bool) -> InferenceResult:
        """Cold or warm forward, then the budget's release (`defer`: it waits for `settle`); needs `_lock`.

        A warm request takes no budget first (the model holds its bytes already), saving a locked state-file
        update per request (~1 ms on a busy host). It is then not marked in use, so another process may pick
        the model as a victim meanwhile; the eviction takes this lock, so it waits for the request and its
        release, and the evictor records the freed bytes after the release has recorded the resident ones. A
        deferred release reads the resident bytes when it runs, under this lock, so an eviction in between is
        recorded right as well.
        """
        try:
            with self._exec_lock:
                result = self.engine.infer(inputs, self.schedule, self.overlap)
        except BaseException:
            self._release_locked(timing)  # a failed request's reservation goes back at once
            raise
        if defer:
            self._unreleased = True
        else:
            self._release_locked(timing)
        return result

    def _release_locked(self, timing: dict[str, float] | None = None) -> None:
        """The budget release of the last request: its resident bytes stay counted, its LRU clock moves."""
        released = time.perf_counter()
        self.residency.release(self.key, self.engine.resident_bytes)
        self._unreleased = False
        if timing is not None:
            timing["release_ms"] = (time.perf_counter() - released) * 1e3

    def settle(self) -> None:
        """Release the budget of requests answered with ``defer_release`` (an engine host: after the reply).

        The release is a locked update of the shared state file (0.4-0.6 ms of every cold start on the device
        hosts, session 8): done after the reply, the client does not wait for it. Until it runs, the model counts
        as in use, so the host settles a cold start's release right after its reply (another model's request may
        need the room); a warm one's only moves the LRU clock and may wait (`engine_host.SETTLE_PAUSE_S`).
        """
        with self._lock:
            if self._unreleased:
                self._release_locked()

    def answer(self, requests: list[Mapping[str, np.ndarray | None]], defer_release: bool = False) -> list[Answer]:
        """One `Answer` per request, in order.

        Invalid requests get their own error; valid ones with the same shape run as one batch (a cold start per
        plan if the model is not resident). With `defer_release` the caller must call `settle` once it has
        answered (warm requests leave their budget release to it).
        """
        self._answered = True
        answers: list[Answer | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, torch.Tensor]]]] = {}
        start = time.perf_counter()
        for i, arrays in enumerate(requests):
            try:
                inputs = self.validate(arrays)
            except RequestError as exc:
                answers[i] = Answer(error=str(exc), invalid=True)
                continue
            signature = tuple((k, tuple(v.shape[1:])) for k, v in sorted(inputs.items()))
            groups.setdefault(signature, []).append((i, inputs))
        validate_ms = (time.perf_counter() - start) * 1e3
        for members in groups.values():
            names = members[0][1].keys()
            if len(members) == 1:  # the usual case at batch 1: no copy
                batch = dict(members[0][1])
            else:
                batch = {k: torch.cat([inputs[k] for _, inputs in members]) for k in names}
            try:
                output, cold, provision_ms, timing = self._infer_timed(batch, defer_release=defer_release)
            except Exception as exc:  # cold start failed, budget cannot fit, ...: every member gets the reason
                for i, _ in members:
                    answers[i] = Answer(error=f"{self.key}: {type(exc).__name__}: {exc}")
                continue
            rows = output.to(torch.float32).numpy()
            timing["validate_ms"] = validate_ms
            row = 0
            for i, inputs in members:
                n = next(iter(inputs.values())).shape[0]
                answers[i] = Answer(output=rows[row : row + n], cold=cold, provision_ms=provision_ms, timing=timing)
                row += n
        return [a if a is not None else Answer(error="not answered") for a in answers]

    def status(self) -> ModelStatus:
        """Evictions so far and device bytes held now."""
        return ModelStatus(self.evictions, self.engine.resident_bytes)

    def refresh_status(self) -> ModelStatus:
        """Same as `status` (this process holds the model); the front end's interface for both layouts."""
        return self.status()

    def describe(self) -> dict[str, object]:
        """What the Triton log line and the front end need to know about this model."""
        return {
            "model": self.model.name,
            "family": self.model.family,
            "dtype": self.settings.dtype,
            "engine": self.settings.engine,
            "devices": [str(d) for d in self.devices],
            "device_name": self.device_name,
            "input_names": list(self.model.input_names),
            "planned_now": self.planned_now,
            "has_plan": self.plan is not None,
            "need_bytes": self.need_bytes,
            "setup_ms": dict(self.setup_ms),
        }

    # ---- residency ----------------------------------------------------------------------------------------------

    def _evict(self) -> None:
        """The residency's evict callback (its listener, or a request of this process): give the memory back."""
        if self._leave_device():
            self.evictions += 1

    def _leave_device(self) -> bool:
        """Evict the engine if it is resident, between requests; whether it was."""
        with self._lock, self._exec_lock:
            if not self.engine.is_resident:
                return False
            self.engine.evict()
            return True

    @property
    def resident_bytes(self) -> int:
        """Device bytes held now."""
        return self.engine.resident_bytes

    def close(self) -> None:
        """Evict, release the address ranges and leave the residency (model unload)."""
        self._closed = True
        try:
            with self._lock, self._exec_lock:
                self.engine.close()
        finally:
            self.residency.unregister(self.key)
            release_shared(self.settings.model, self.settings.dtype, self.settings.seed)
