"""The measurement protocol: `Bench` runs the steps in their order, and a failed step does not end the run."""

from __future__ import annotations

import argparse
import functools
import traceback
from collections.abc import Callable

from .cold_samples import ColdSamples
from .eviction_run import EvictionRun
from .load_compare import load_compare
from .progress import say
from .repository import Layout
from .residency_watch import ResidencyWatch
from .session import Session


class Bench:
    """One run: the server session and the measurements made on it."""

    def __init__(self, args: argparse.Namespace, lay: Layout) -> None:
        self.args, self.lay = args, lay
        self.session = Session(args, lay)
        residency = ResidencyWatch(lay.residency)
        self.cold = ColdSamples(self.session, residency)
        self.evictions = EvictionRun(self.session, residency)

    def step(self, name: str, fn: Callable[[], None]) -> None:
        """Run one step; a failure is printed and recorded, and the run goes on."""
        say(f"== {name}")
        try:
            fn()
        except Exception as exc:  # a benchmark run records what broke and continues with what it can
            msg = f"{name}: {type(exc).__name__}: {exc}"
            self.session.errors.append(msg)
            say(f"FAILED {msg}")
            traceback.print_exc()

    def start(self) -> None:
        """Step 2: the server with the first model (`Session.start`).

        Raises:
            deepplan_backend.serve.ServeError: the server did not start (the message holds its error lines).
        """
        self.session.start()

    def run(self) -> None:
        """The other models, then steps 3 to 7 (the server is up)."""
        self.step("load the other models", self.session.load_rest)
        for model in self.args.models:
            self.step(f"cold/warm latency of {model}", functools.partial(self.cold.measure, model))
        self.step("eviction run", self.evictions.run)
        if not self.args.skip_load_compare:
            for model in self.args.models[: 1 if self.args.quick else None]:
                self.step(f"model-control API loads of {model}", functools.partial(load_compare, self.session, model))

    def stop(self) -> None:
        """Stop the server (always) and close the log."""
        self.session.stop()
