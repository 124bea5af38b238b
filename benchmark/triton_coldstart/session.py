"""The server of one run (step 2): started with the first model, the others loaded after it; every answer counted."""

from __future__ import annotations

import argparse
import concurrent.futures
import secrets
import threading
import time

from deepplan_backend import serve
from loadtest.experiments.server import allow_paths, free_ports

from .client import Answer, Client, grpc_module
from .progress import say
from .reference import Reference, make_reference
from .repository import Layout, evict_names
from .server_log import ServerLog
from .stats import ModelStats


class Session:
    """The run's server, its client, the reference answers, and what every model met (`ModelStats`)."""

    def __init__(self, args: argparse.Namespace, lay: Layout) -> None:
        self.args, self.lay = args, lay
        self.first = args.models[0]
        self.evicts = evict_names(args)
        self.stats: dict[str, ModelStats] = {m: ModelStats() for m in [*args.models, *self.evicts]}
        self.errors: list[str] = []
        self.refs: dict[str, Reference] = {}
        self.ready_s: float | None = None
        self.all_loaded_s: float | None = None
        self.load_ms: dict[str, float] = {}
        self._t_start = time.monotonic()
        self.client: Client | None = None
        self.server: serve.TritonServer | None = None
        self.cfg: serve.ServeConfig | None = None
        self.log = ServerLog(args.out / "server.log")

    def start(self) -> None:
        """Start tritonserver with the first model, compute the references meanwhile, wait until ready.

        Only the first model loads at start: it plans alone (no other process profiles the GPUs meanwhile);
        `load_rest` then loads the others through the model-control API, and they find their plans made.

        Raises:
            deepplan_backend.serve.ServeError: the server did not start (the message holds its error lines).
        """
        http, grpc, metrics = free_ports(3)
        self.cfg = serve.ServeConfig(
            admin_token=secrets.token_urlsafe(16),
            model_repository=self.lay.repo,
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
            load_models=(self.first,),
            cache_dir=self.lay.tmp / "cache",
            ready_timeout_s=self.args.ready_timeout,
            grace_s=30.0,
        )
        allow_paths(self.lay.plans, self.lay.residency)
        self.server = serve.TritonServer(self.cfg, log_sink=self.log)
        refs_error: list[BaseException] = []
        worker = threading.Thread(target=self._references, args=(refs_error,), daemon=True)
        self._t_start = time.monotonic()
        self.server.start()
        say(f"tritonserver started (pid {self.server.pid}), loading {self.first} (it plans at load if needed)")
        worker.start()
        self.server.wait_ready(progress=say, every_s=15.0)
        self.ready_s = time.monotonic() - self._t_start
        say(f"server ready after {self.ready_s:.1f} s")
        worker.join()
        if refs_error:
            raise refs_error[0]
        self.client = Client(self.cfg.url("gRPC"), self.cfg.admin_token, self.refs)

    def _references(self, errors: list[BaseException]) -> None:
        try:
            for model in self.args.models:
                self.refs[model] = make_reference(model, self.args, self.lay)
                say(f"reference output of {model} computed in this process")
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    def load_rest(self) -> None:
        """The other listed models one by one (each may plan), then the eviction instances all at once."""
        assert self.client is not None and self.cfg is not None
        for model in self.args.models[1:]:
            t0 = time.perf_counter()
            self.client.client.load_model(model, headers=self.client.headers, client_timeout=300)
            self.load_ms[model] = (time.perf_counter() - t0) * 1e3
            say(f"{model} loaded through the model-control API in {self.load_ms[model]:.0f} ms")
        url, headers = self.cfg.url("gRPC"), self.client.headers

        def load(name: str) -> tuple[str, float]:
            client = grpc_module().InferenceServerClient(url)  # one client per thread
            t0 = time.perf_counter()
            client.load_model(name, headers=headers, client_timeout=300)
            return name, (time.perf_counter() - t0) * 1e3

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.evicts)) as pool:
            for name, ms in pool.map(load, self.evicts):
                self.load_ms[name] = ms
        self.all_loaded_s = time.monotonic() - self._t_start
        say(f"{len(self.evicts)} eviction instances loaded; all models ready {self.all_loaded_s:.1f} s after start")

    def zoo_name(self, name: str) -> str:
        """The zoo model Triton model `name` serves (an eviction instance serves the first model)."""
        return self.first if name in self.evicts else name

    def ask(self, name: str) -> Answer:
        """One request to `name`, counted in its stats."""
        assert self.client is not None
        return self.stats[name].count(self.client.infer(name, self.zoo_name(name)))

    def stop(self) -> None:
        """Stop the server (always) and close the log."""
        if self.server is not None and self.server.pid is not None:
            say("stopping tritonserver")
            code = self.server.stop()
            say(f"tritonserver exited with code {code}")
            self.server.wait_output_closed()  # an engine host's last lines (it lingers a moment) go in server.log
        self.log.close()
