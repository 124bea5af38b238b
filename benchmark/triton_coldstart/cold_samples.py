"""Steps 3 and 6: each listed model's first, warm and forced cold requests, and Triton's floor after each cold one.

The floor is one request to the model's `floor_model`, right after the cold one, through the same client path.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from deepplan_backend.repository import write_model

from .floor_model import FLOOR_MODEL_PY, floor_config
from .progress import say
from .residency_watch import ResidencyWatch, resident
from .session import Session
from .stats import median_ms


class ColdSamples:
    """Cold starts forced by requests to the eviction instances, and Triton's floor for the same request."""

    def __init__(self, session: Session, residency: ResidencyWatch) -> None:
        self.session, self.residency = session, residency
        self.floor: dict[str, list[float]] = {}  # zoo model -> client ms of its floor model's requests
        self._rr = 0

    def evict(self, name: str) -> int:
        """Request eviction instances (round robin) until `name` is no longer resident; return how many."""
        evicts = self.session.evicts
        for touched in range(1, 2 * len(evicts) + 1):
            other = evicts[self._rr % len(evicts)]
            self._rr += 1
            if other == name:
                continue
            self.session.ask(other)
            if not resident(self.residency.snapshot()).get(name, False):
                return touched
        raise RuntimeError(f"{name} still resident after {2 * len(evicts)} requests to other models")

    def measure(self, name: str) -> None:
        """First request, warm requests, then forced cold starts, each followed by one to the floor model (step 3)."""
        s, args = self.session, self.session.args
        st = s.stats[name]
        st.first = s.ask(name)
        say(
            f"{name}: first request {st.first.client_ms:.2f} ms (cold={st.first.cold}, "
            f"engine {st.first.engine_ms:.2f} ms, correct={st.first.correct})"
        )
        for _ in range(args.warm):
            a = s.ask(name)
            if not a.cold:
                st.warm.append(a.client_ms)
        with self._floor_model(name) as floor:
            for i in range(args.recold):
                touched = self.evict(name)
                a = s.ask(name)
                if a.cold:
                    st.colds.append(a)
                say(
                    f"{name}: cold start {i + 1}/{args.recold} after {touched} other request(s): client "
                    f"{a.client_ms:.2f} ms, backend execute {a.backend_ms or math.nan:.2f} ms, engine "
                    f"{a.engine_ms:.2f} ms (cold={a.cold}, correct={a.correct})"
                )
                if floor is not None and s.client is not None:  # the same client path, a moment later
                    self.floor.setdefault(name, []).append(s.client.infer(floor, name, ("output",)).client_ms)
        p50, p99 = median_ms(st.warm), median_ms(st.warm, 99)
        say(f"{name}: warm p50 {p50 or math.nan:.2f} ms, p99 {p99 or math.nan:.2f} ms over {len(st.warm)} requests")
        if name in self.floor:
            say(f"{name}: Triton's floor p50 {median_ms(self.floor[name]) or math.nan:.2f} ms")

    @contextlib.contextmanager
    def _floor_model(self, model: str) -> Iterator[str | None]:
        """`model`'s floor model, loaded and past its first requests; None (and an error noted) if it fails."""
        s = self.session
        assert s.client is not None
        c, name = s.client, f"{model}-floor"
        loaded = ready = False
        try:
            write_model(s.lay.repo, name, floor_config(name, model, s.args, s.lay), FLOOR_MODEL_PY)
            c.client.load_model(name, headers=c.headers, client_timeout=120)
            loaded = True
            for _ in range(3):  # the stub's first requests import and allocate: not the floor
                c.infer(name, model, ("output",))
            ready = True
        except Exception as exc:  # the cold starts are measured without it
            s.errors.append(f"floor model {name}: {type(exc).__name__}: {exc}")
            say(f"FAILED floor model {name}: {exc}")
        try:
            yield name if ready else None
        finally:
            if loaded:  # also when its first requests failed: it must not stay loaded for the rest of the run
                c.client.unload_model(name, headers=c.headers, client_timeout=120)
