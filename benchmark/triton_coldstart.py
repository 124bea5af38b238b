"""Cold starts of the deepplan backend inside the real tritonserver, measured by a gRPC client, in ONE run.

    python3 -m benchmark.triton_coldstart --out results/triton --models bert-base resnet50 --instances 8 --budget 2GiB
    python3 -m benchmark.triton_coldstart --out /tmp/quick --quick        # tiny models, CPU is fine

Steps (each prints progress; a failing step is recorded and the run goes on where it can):

1. A model repository in a temporary folder: one deepplan model per ``--models`` entry, plus ``--instances``
   copies of the first model (``<model>-evict-<i>``). All target GPU 0 (``devices auto`` adds every peer GPU for
   PT; on a machine without GPU they run on the CPU) and declare one per-device ``budget`` that holds only a few
   of them, so requests force evictions. Plans are made by the backend at load, into ``<out>/plans``.
2. ``tritonserver`` through `deepplan_backend.serve.TritonServer` (the code path of ``python3 -m deepplan_backend``)
   with the first model; the time to readiness is recorded. The other models are then loaded through the
   model-control API (the listed ones one by one, the eviction instances together), so that each plan is made
   by one process alone, with no other process profiling the same GPUs at the same time.
3. Per model, through ``tritonclient.grpc``: the first request (cold), ``--warm`` warm requests, then ``--recold``
   cold starts forced by requests to the eviction instances (until the residency state shows the model evicted):
   client latency vs. the provisioning time the backend reports in its ``cold_start`` output; ratio client/engine.
4. Eviction run: ``--rounds`` round-robin passes over the eviction instances; cold starts (``cold_start`` output),
   evictions (resident -> evicted transitions in the residency state, and Triton's metrics), peak bytes counted
   against the budget, and every answer compared with the plain model computed in this process.
5. PT: the devices each model serves on, from the backend's ``deepplan: <instance> ready: ... devices=[...]`` line.
6. Triton's floor, measured during step 3: a ``backend: "python"`` model with the same configuration (inputs,
   outputs, batching, instance kind) whose ``execute`` only reads the inputs as the deepplan front end does and
   answers zeros (`FLOOR_MODEL_PY`), loaded through the model-control API for the forced cold starts, asked once
   right after each of them through the same client path, unloaded. Its median client latency,
   ``triton_floor_ms``, is what any Python-backend model pays for this request in the same conditions, whatever
   it computes: gRPC, Triton's scheduling and the stub's IPC. ``overhead_ms`` = client - engine cold latency, of
   which ``own_overhead_ms`` = overhead - floor is ours.
7. Triton's own readiness for comparison: a plain ``backend: "python"`` model that loads the same weights from a
   Hugging Face checkpoint folder and moves them to the device in ``initialize``, loaded through the
   model-control API (admin token) and timed until it answers its first request; then the same for a fresh
   deepplan model of the same zoo model. Both are unloaded afterwards.
8. ``<out>/triton_coldstart.csv`` and ``.json``, ``<out>/server.log``; a table at the end. ``backend_cold_ms`` is
   Triton's own ``compute_infer`` time of the cold requests (statistics API): client - backend = Triton and
   network, backend - engine = the Python backend's exchange with the stub, the front end in it and its hop to
   the engine host.

Triton instance kind: ``KIND_CPU`` by default (``--triton-kind gpu`` for ``KIND_GPU`` on GPU 0): the deepplan
backend picks its GPUs itself from ``devices``, so the kind only decides which device id Triton passes.

Exit codes: 0 all steps ran and every answer was right; 1 a step failed or an answer was wrong; 2 the server did
not start (its error lines are printed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import datetime
import functools
import json
import math
import os
import re
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepplan_backend import install, serve
from deepplan_backend.repository import OUTPUT_DIMS, config_pbtxt, inputs_pbtxt, write_model
from deepplan_backend.runtime import zoo
from deepplan_backend.runtime.answer import TRACE_ENV
from deepplan_backend.runtime.residency import scratch_state_dir
from deepplan_backend.runtime.served_model import parse_size

from .coldstart_breakdown import BreakdownError
from .coldstart_breakdown import draw as draw_breakdown
from .plot_files import draw_beside

RTOL = ATOL = 1e-3
COLUMNS: tuple[str, ...] = (
    "model",
    "engine",
    "graphs",
    "process",
    "devices",
    "pt",
    "pt_peer_layers",
    "gpu_name",
    "client_cold_ms",
    "backend_cold_ms",
    "engine_cold_ms",
    "ratio",
    "triton_floor_ms",
    "overhead_ms",
    "own_overhead_ms",
    "cold_samples",
    "first_client_cold_ms",
    "first_engine_cold_ms",
    "client_warm_p50_ms",
    "client_warm_p99_ms",
    "triton_load_ms",
    "triton_load_api_ms",
    "deepplan_load_ms",
    "deepplan_load_api_ms",
    "need_bytes",
    "budget_bytes",
    "cold_starts",
    "evict_run_requests",
    "evict_run_cold_starts",
    "evictions",
    "budget_respected",
    "all_correct",
    "server_ready_s",
    "all_models_loaded_s",
    "date",
)
TRACE_PHASES = (
    "read", "answer", "respond", "metrics", "exchange", "up", "host", "down", "validate", "queue", "room", "evict",
    "engine", "release",
)  # fmt: skip
"""Phases of the backend's ``deepplan trace`` lines (see `deepplan_backend.model`) reported per model: the
median over its cold requests, as ``trace_<phase>_ms`` columns."""
COLUMNS += tuple(f"trace_{p}_ms" for p in TRACE_PHASES)
TRACE_LINE = re.compile(r"deepplan trace (?P<instance>\S+): \d+ request\(s\) (?P<kind>cold|warm) (?P<fields>.*)")
TRACE_FIELD = re.compile(r"(\w+)=([0-9.]+)")
READY_LINE = re.compile(
    r"deepplan: (?P<instance>\S+) ready: (?P<model>\S+) (?P<dtype>\S+) engine=(?P<engine>\S+) "
    r"devices=\[(?P<devices>[^\]]*)\](?: in (?P<where>engine host pid \d+|this stub))? \((?P<plan>[^)]*)\), "
    r"(?P<need>\d+) bytes per cold start"
)
METRIC_LINE = re.compile(r"^(deepplan_\w+)\{([^}]*)\}\s+(\S+)$")
T0 = time.monotonic()
METRICS_SETTLE_S = 1.5
"""Wait before each metrics scrape of the eviction run: a victim's eviction count reaches Triton's metrics when its
own front end refreshes it, every second (`deepplan_backend.model.METRICS_REFRESH_S`), not at the eviction."""


def say(msg: str) -> None:
    """Progress line with the time since start."""
    print(f"[coldstart {time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def _grpc_module():
    """``tritonclient.grpc``; its client only calls ``rapidjson.loads``, so stdlib json stands in when missing."""
    try:
        import rapidjson  # noqa: F401
    except ImportError:
        sys.modules["rapidjson"] = json
    import tritonclient.grpc as grpcclient

    return grpcclient


STATS_WAIT_S = 1.0
"""How long a request's split waits for Triton to count it in the model's statistics."""


# ---- configuration -----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line; ``--quick`` fills unset options with tiny models and few repeats."""
    p = argparse.ArgumentParser(prog="python3 -m benchmark.triton_coldstart", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/triton"), help="output folder (default %(default)s)")
    p.add_argument("--models", nargs="+", default=None, help="zoo models (default bert-base resnet50)")
    p.add_argument("--instances", type=int, default=None, help="eviction copies of the first model (default 8)")
    p.add_argument("--budget", default="auto", help="per-device budget, e.g. 2GiB; auto: fits about instances/2")
    p.add_argument("--engine", default="deepplan", choices=("demand", "pipeline", "deepplan"))
    p.add_argument(
        "--eager", action="store_true", help="deepplan parameter graphs=false (default: CUDA graph replay on GPU)"
    )
    p.add_argument(
        "--process",
        choices=("shared", "instance"),
        default="shared",
        help="deepplan parameter process: the engine host of the target GPU (default) or each model's own stub",
    )
    p.add_argument("--devices", default="auto", help='deepplan "devices" parameter: auto or ids, target first')
    p.add_argument("--seq-len", type=int, default=None, help="tokens per text request (default: the model's)")
    p.add_argument("--warm", type=int, default=None, help="warm requests per model (default 20)")
    p.add_argument("--recold", type=int, default=None, help="forced cold starts per model (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="round-robin passes of the eviction run (default 3)")
    p.add_argument("--triton-kind", choices=("cpu", "gpu"), default="cpu", help="Triton instance kind (see doc)")
    p.add_argument("--ready-timeout", type=float, default=420.0, help="seconds to wait for the server")
    p.add_argument("--skip-load-compare", action="store_true", help="skip step 7 (model-control API loads)")
    p.add_argument("--quick", action="store_true", help="tiny models, few repeats (CPU tests)")
    args = p.parse_args(argv)
    quick = args.quick
    args.models = args.models or (["tiny-bert", "tiny-resnet"] if quick else ["bert-base", "resnet50"])
    args.instances = args.instances if args.instances is not None else (3 if quick else 8)
    args.warm = args.warm if args.warm is not None else (5 if quick else 20)
    args.recold = args.recold if args.recold is not None else (2 if quick else 10)
    args.rounds = args.rounds if args.rounds is not None else (2 if quick else 3)
    for m in args.models:
        if m not in zoo.ZOO:
            p.error(f"--models: {m!r} is not a zoo model ({', '.join(zoo.ZOO)})")
    if args.instances < 2:
        p.error("--instances must be >= 2 (they force the cold starts and evictions)")
    return args


def weight_bytes(model: str) -> int:
    """FP32 bytes of the zoo model's parameters and buffers (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        module = zoo._build_from_config(zoo.ZOO[model])
    tensors = [*module.parameters(), *module.buffers()]
    return int(sum(t.numel() * t.element_size() for t in tensors))


def resolve_budget(args: argparse.Namespace) -> int:
    """``--budget`` in bytes; ``auto`` holds (instances // 2) + 0.5 copies of the first model's weights."""
    sizes = {m: weight_bytes(m) for m in args.models}
    if args.budget != "auto":
        budget = parse_size(args.budget, "--budget")
    else:
        budget = int((max(1, args.instances // 2) + 0.5) * sizes[args.models[0]])
    largest = max(sizes.values())
    if budget < largest:
        raise SystemExit(f"--budget {budget} bytes is smaller than the largest model ({largest} bytes)")
    return budget


# ---- model repository --------------------------------------------------------------------------------------------

PLAIN_MODEL_PY = '''"""Plain Triton Python model: the same weights from a checkpoint folder, moved to the device."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import torch
        import transformers

        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.family = params["family"]
        self.device = torch.device(params["device"])
        loader = {
            "resnet": transformers.AutoModelForImageClassification,
            "gpt2": transformers.AutoModelForCausalLM,
        }.get(self.family, transformers.AutoModel)
        self.model = loader.from_pretrained(params["checkpoint"]).eval().to(self.device)

    def execute(self, requests):
        import torch
        from torch.utils.dlpack import from_dlpack, to_dlpack

        responses = []
        for request in requests:
            # DLPack both ways, as the deepplan backend does: the stub's NumPy bridge breaks under NumPy 2.
            inputs = {t.name(): from_dlpack(t.to_dlpack()).to(self.device) for t in request.inputs()}
            with torch.inference_mode():
                out = self.model(**inputs, return_dict=True)
            if self.family == "resnet":
                y = out.logits
            elif self.family == "gpt2":
                y = out.logits[:, -1, :]
            else:
                y = out.pooler_output
            tensor = pb_utils.Tensor.from_dlpack("output", to_dlpack(y.float().cpu().contiguous()))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
'''


def plain_config(name: str, model: str, checkpoint: Path, device: str) -> str:
    """``config.pbtxt`` of the plain Python model (same inputs and ``output`` as the deepplan model)."""
    inputs = inputs_pbtxt(model)
    params = {"checkpoint": str(checkpoint), "family": zoo.ZOO[model].family, "device": device}
    param_text = ",\n".join(f'  {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in params.items())
    return f"""name: "{name}"
backend: "python"
max_batch_size: 8
input [
{inputs}
]
output [
  {{ name: "output", data_type: TYPE_FP32, dims: [ {OUTPUT_DIMS[model]} ] }}
]
instance_group [
  {{ count: 1, kind: KIND_CPU }}
]
parameters [
{param_text}
]
"""


FLOOR_MODEL_PY = '''"""Triton's floor: reads the inputs as the deepplan front end does, answers zeros."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from deepplan_backend.dlpack import array_from_capsule, capsule_from_array


class TritonPythonModel:
    def initialize(self, args):
        outputs = json.loads(args["model_config"])["output"]
        self.dims = {o["name"]: [int(d) for d in o["dims"]] for o in outputs}

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = [array_from_capsule(t.to_dlpack()) for t in request.inputs()][0].shape[0]
            tensors = [
                pb_utils.Tensor.from_dlpack(name, capsule_from_array(np.zeros((rows, *dims), np.float32)))
                for name, dims in self.dims.items()
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


def floor_config(name: str, model: str, args: argparse.Namespace, lay: Layout) -> str:
    """The floor model's ``config.pbtxt``: the deepplan model's, run by the plain Python backend."""
    return deepplan_config(name, model, args, lay).replace('backend: "deepplan"', 'backend: "python"', 1)


@dataclass
class Layout:
    """Where everything of one run lives."""

    out: Path
    tmp: Path
    budget: int
    gpu: bool
    state: Path  # the residency folder's parent: in memory, as a server's own (`residency.scratch_state_dir`)

    @property
    def repo(self) -> Path:
        """Triton's model repository (temporary)."""
        return self.tmp / "repo"

    @property
    def plans(self) -> Path:
        """Plan repository (kept in the output folder)."""
        return self.out / "plans"

    @property
    def residency(self) -> Path:
        """Residency state folder shared by the server's deepplan models."""
        return self.state / "residency"

    @property
    def checkpoints(self) -> Path:
        """Checkpoint folders of the plain Python models."""
        return self.tmp / "checkpoints"


def deepplan_config(name: str, model: str, args: argparse.Namespace, lay: Layout) -> str:
    """One deepplan model of this run: engine, devices, shared budget, plan repository, residency state."""
    params = {
        "engine": args.engine,
        "devices": args.devices,
        "budget": str(lay.budget),
        "plan_repository": str(lay.plans.resolve()),
        "residency_dir": str(lay.residency),
    }
    if args.seq_len:
        params["seq_len"] = str(args.seq_len)
    params["graphs"] = "false" if args.eager else "true"
    params["process"] = args.process
    gpu_kind = lay.gpu and args.triton_kind == "gpu"
    return config_pbtxt(
        name,
        model,
        parameters=params,
        kind="KIND_GPU" if gpu_kind else "KIND_CPU",
        gpus=(0,) if gpu_kind else (),
        queue_delay_us=0,  # latency, not batching, is measured: no artificial queue wait
    )


def evict_names(args: argparse.Namespace) -> list[str]:
    """Names of the eviction instances of the first model."""
    return [f"{args.models[0]}-evict-{i}" for i in range(args.instances)]


def build_repository(args: argparse.Namespace, lay: Layout) -> None:
    """The repository Triton loads at start: the listed models and the eviction instances."""
    for model in args.models:
        write_model(lay.repo, model, deepplan_config(model, model, args, lay))
    for name in evict_names(args):
        write_model(lay.repo, name, deepplan_config(name, args.models[0], args, lay))


def allow_paths(lay: Layout) -> None:
    """Let the server's models use this run's plan repository and residency folder.

    The backend confines a model's path parameters to its model repository, the server's plan repository
    (``$DEEPPLAN_PLAN_REPOSITORY``) and ``$DEEPPLAN_ALLOWED_ROOTS``; the server inherits this environment.
    """
    plans, state = str(lay.plans.resolve()), str(lay.residency.resolve())
    os.environ["DEEPPLAN_PLAN_REPOSITORY"] = plans
    roots = [r for r in os.environ.get("DEEPPLAN_ALLOWED_ROOTS", "").split(os.pathsep) if r]
    os.environ["DEEPPLAN_ALLOWED_ROOTS"] = os.pathsep.join([plans, state, *roots])


# ---- reference outputs -------------------------------------------------------------------------------------------


@dataclass
class Reference:
    """A zoo model's request inputs and the plain model's output for them (computed in this process)."""

    inputs: dict[str, np.ndarray]
    output: np.ndarray
    checkpoint: Path


def make_reference(model: str, args: argparse.Namespace, lay: Layout) -> Reference:
    """Build the zoo model (same seed as the server), save a checkpoint folder, run it on the server's device."""
    zm = zoo.load_model(model)
    checkpoint = lay.checkpoints / model
    inner: Any = zm.module.inner  # a transformers PreTrainedModel
    inner.save_pretrained(str(checkpoint))
    device = torch.device("cuda:0" if lay.gpu else "cpu")
    seq = min(args.seq_len, zm.max_seq_len) if args.seq_len else None
    tensors = zm.example_inputs(1, seq, seed=1)
    module = zm.module.to(device)
    with torch.inference_mode():
        output = module(**{k: v.to(device) for k, v in tensors.items()}).float().cpu().numpy()
    module.to("cpu")
    del module, zm
    if lay.gpu:
        torch.cuda.empty_cache()
    return Reference({k: v.numpy() for k, v in tensors.items()}, output, checkpoint)


# ---- server and client -------------------------------------------------------------------------------------------


def _model_of(instance: str) -> str:
    """The Triton model of an instance name (`<model>_<group>_<index>`, also the start of a residency key)."""
    return instance.rsplit("_", 2)[0]


class ServerLog:
    """Sink for the server's log: ``server.log``, progress echo of backend lines and errors, PT lines parsed."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w")
        self.ready: dict[str, dict[str, Any]] = {}
        self.cold_traces: dict[str, list[dict[str, float]]] = {}  # model -> its cold requests' phases
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        """Take one log line."""
        with self._lock:
            if self.file.closed:  # a host lingered past `serve.HOST_OUTPUT_WAIT_S`: its last lines are lost
                return
            self.file.write(line)
            self.file.flush()
        t = TRACE_LINE.search(line)
        if t:
            if t["kind"] == "cold":
                model = _model_of(t["instance"])
                fields = {k: float(v) for k, v in TRACE_FIELD.findall(t["fields"])}
                self.cold_traces.setdefault(model, []).append(fields)
            return  # one per request: in server.log only
        m = READY_LINE.search(line)
        if m:
            model = _model_of(m["instance"])
            self.ready[model] = {
                "devices": re.findall(r"'([^']+)'", m["devices"]),
                "plan": m["plan"],
                "need_bytes": int(m["need"]),
                "engine": m["engine"],
                "process": "instance" if m["where"] in (None, "this stub") else "shared",
            }
        if m or line.startswith("E") and "CudaDriverHelper" not in line or "Traceback" in line:
            say(f"server: {line.rstrip()[:300]}")

    def close(self) -> None:
        """Close ``server.log``."""
        with self._lock:
            self.file.close()


@dataclass
class Answer:
    """One response as the client saw it."""

    client_ms: float
    cold: bool
    engine_ms: float
    correct: bool
    max_abs_diff: float
    backend_ms: float | None = None  # Triton's compute_infer for this request: the backend's execute()


class Client:
    """gRPC inference with the inputs of each zoo model, checked against its reference."""

    def __init__(self, url: str, token: str, refs: dict[str, Reference]) -> None:
        self.grpc = _grpc_module()
        self.client = self.grpc.InferenceServerClient(url)
        self.headers = {serve.GRPC_ADMIN_HEADER_KEY: token}
        self.refs = refs
        self._inputs: dict[str, list] = {}

    def _infer_inputs(self, model: str) -> list:
        if model not in self._inputs:
            items = []
            for name, array in self.refs[model].inputs.items():
                t = self.grpc.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
                t.set_data_from_numpy(array)
                items.append(t)
            self._inputs[model] = items
        return self._inputs[model]

    def infer(self, name: str, model: str, outputs: tuple[str, ...] = ("output", "cold_start")) -> Answer:
        """One request to Triton model `name` serving zoo model `model`."""
        inputs = self._infer_inputs(model)
        before = self._compute_infer(name)
        start = time.perf_counter()
        result = self.client.infer(name, inputs, client_timeout=120)
        client_ms = (time.perf_counter() - start) * 1e3
        backend_ms = self._backend_ms(name, before)
        out = result.as_numpy("output")
        ref = self.refs[model].output
        correct = bool(out.shape == ref.shape and np.allclose(out, ref, rtol=RTOL, atol=ATOL))
        diff = float(np.abs(out - ref).max()) if out.shape == ref.shape else math.inf
        if "cold_start" in outputs:
            flags = result.as_numpy("cold_start").reshape(-1, 2)[0]
            return Answer(client_ms, bool(flags[0] >= 0.5), float(flags[1]), correct, diff, backend_ms)
        return Answer(client_ms, False, 0.0, correct, diff, backend_ms)

    def _compute_infer(self, name: str) -> tuple[int, int] | None:
        """Triton's (count, cumulative ns) of the model's execute() (its statistics API), to split the client's time."""
        try:
            stats = self.client.get_inference_statistics(name, as_json=True)["model_stats"][0]
            compute = stats["inference_stats"]["compute_infer"]
            return int(compute.get("count", 0)), int(compute["ns"])
        except Exception:  # statistics off or the model unloaded: the split is just not reported
            return None

    def _backend_ms(self, name: str, before: tuple[int, int] | None) -> float | None:
        """The execute() time of the request just answered, once Triton has counted it (None: no clean split).

        Triton records a request's statistics after sending its response: read at once, they may not hold it
        yet, and the next request's difference would then hold two (a CPU test saw a backend time above the
        client's). So this waits, up to `STATS_WAIT_S`, until exactly one more execution is counted.
        """
        if before is None:
            return None
        deadline = time.monotonic() + STATS_WAIT_S
        while (after := self._compute_infer(name)) is not None:
            if after[0] == before[0] + 1:
                return (after[1] - before[1]) / 1e6
            if after[0] > before[0] + 1 or time.monotonic() > deadline:
                return None  # another request of this model was counted too, or this one never was
            time.sleep(0.002)
        return None


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (held open together, then released)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((serve.LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def plan_summary(plans: Path) -> dict[str, Any]:
    """PT evidence from the plan files the backend wrote: per variant, layers and MiB per load source."""
    from deepplan_backend.runtime.plan_repository import list_plans, read_plan

    summary: dict[str, Any] = {}
    for path in list_plans(plans):
        plan = read_plan(path)
        variants = []
        for v in plan.variants:
            sources: dict[str, dict[str, float]] = {}
            for layer, src in zip(plan.layers, v.schedule.sources, strict=True):
                name = "dha" if src < 0 else "target" if src == 0 else f"peer{src}"
                entry = sources.setdefault(name, {"layers": 0, "mib": 0.0})
                entry["layers"] += 1
                entry["mib"] += layer.nbytes / 2**20
            variants.append(
                {"engine": v.engine, "num_devices": v.num_devices, "predicted_ms": v.predicted_ms, "sources": sources}
            )
        summary[path.name] = {"model": plan.key.model, "gpu": plan.key.gpu_name, "variants": variants}
    return summary


def peer_layers(summary: dict[str, Any], model: str, gpu: str, engine: str, num_devices: int) -> int | None:
    """Layers that the served variant of `model` loads through peer GPUs (PT), from `plan_summary`."""
    for plan in summary.values():
        if plan["model"] != model or plan["gpu"] != gpu:
            continue
        for v in plan["variants"]:
            if v["engine"] == engine and v["num_devices"] == num_devices:
                return sum(int(e["layers"]) for k, e in v["sources"].items() if k.startswith("peer"))
    return None


def scrape_metrics(url: str) -> dict[str, float]:
    """Sum of each ``deepplan_*`` counter/gauge over all models (Triton's metrics port)."""
    totals: dict[str, float] = {}
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if m and "_bucket" not in m[1]:
            totals[m[1]] = totals.get(m[1], 0.0) + float(m[3])
    return totals


# ---- the run -----------------------------------------------------------------------------------------------------


def _ms(values: Sequence[float], q: float | None = None) -> float | None:
    if not values:
        return None
    return float(statistics.median(values) if q is None else np.percentile(values, q))


@dataclass
class ModelStats:
    """What one served model met during the run."""

    first: Answer | None = None
    warm: list[float] = field(default_factory=list)
    colds: list[Answer] = field(default_factory=list)
    cold_starts: int = 0
    answers: int = 0
    wrong: int = 0
    max_abs_diff: float = 0.0
    loads: dict[str, float | bool | None] = field(default_factory=dict)

    def count(self, a: Answer) -> Answer:
        """Account one answer of this model."""
        self.answers += 1
        self.cold_starts += int(a.cold)
        self.wrong += int(not a.correct)
        self.max_abs_diff = max(self.max_abs_diff, a.max_abs_diff)
        return a


class Bench:
    """One run: server, client, measurements and results."""

    def __init__(self, args: argparse.Namespace, lay: Layout) -> None:
        self.args, self.lay = args, lay
        self.first = args.models[0]
        self.evicts = evict_names(args)
        self.stats: dict[str, ModelStats] = {m: ModelStats() for m in [*args.models, *self.evicts]}
        self.errors: list[str] = []
        self.refs: dict[str, Reference] = {}
        self.evict_run: dict[str, Any] = {}
        self.evict_samples: list[Answer] = []
        self.plans: dict[str, Any] = {}
        self.ready_s: float | None = None
        self.all_loaded_s: float | None = None
        self.load_ms: dict[str, float] = {}
        self.floor: dict[str, list[float]] = {}  # zoo model -> client ms of its floor model's requests
        self._t_start = time.monotonic()
        self.client: Client | None = None
        self.server: serve.TritonServer | None = None
        self.cfg: serve.ServeConfig | None = None
        self.log = ServerLog(args.out / "server.log")
        self._rr = 0
        self._residency: Any = None

    def step(self, name: str, fn: Callable[[], None]) -> None:
        """Run one step; a failure is printed and recorded, and the run goes on."""
        say(f"== {name}")
        try:
            fn()
        except Exception as exc:  # a benchmark run records what broke and continues with what it can
            msg = f"{name}: {type(exc).__name__}: {exc}"
            self.errors.append(msg)
            say(f"FAILED {msg}")
            traceback.print_exc()

    # -- start --

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
        allow_paths(self.lay)
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
            client = _grpc_module().InferenceServerClient(url)  # one client per thread
            t0 = time.perf_counter()
            client.load_model(name, headers=headers, client_timeout=300)
            return name, (time.perf_counter() - t0) * 1e3

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.evicts)) as pool:
            for name, ms in pool.map(load, self.evicts):
                self.load_ms[name] = ms
        self.all_loaded_s = time.monotonic() - self._t_start
        say(f"{len(self.evicts)} eviction instances loaded; all models ready {self.all_loaded_s:.1f} s after start")

    def _references(self, errors: list[BaseException]) -> None:
        try:
            for model in self.args.models:
                self.refs[model] = make_reference(model, self.args, self.lay)
                say(f"reference output of {model} computed in this process")
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    # -- helpers --

    def ask(self, name: str) -> Answer:
        """One request to `name`, counted in its stats."""
        assert self.client is not None
        model = self.first if name in self.evicts else name
        return self.stats[name].count(self.client.infer(name, model))

    def snapshot(self) -> dict:
        """The residency state of the server's models (shared state folder)."""
        if self._residency is None:
            from deepplan_backend.runtime.residency import Residency

            self._residency = Residency(self.lay.residency)
        return self._residency.snapshot()

    def resident(self, snap: dict) -> dict[str, bool]:
        """Triton model name -> resident."""
        return {_model_of(k): bool(e["resident"]) for k, e in snap["models"].items()}

    def used_bytes(self, snap: dict) -> int:
        """Bytes counted against the budget of the models' target device."""
        return sum(int(e["bytes"]) for e in snap["models"].values())

    def evict_model(self, name: str) -> int:
        """Request eviction instances (round robin) until `name` is no longer resident; return how many."""
        for touched in range(1, 2 * len(self.evicts) + 1):
            other = self.evicts[self._rr % len(self.evicts)]
            self._rr += 1
            if other == name:
                continue
            self.ask(other)
            if not self.resident(self.snapshot()).get(name, False):
                return touched
        raise RuntimeError(f"{name} still resident after {2 * len(self.evicts)} requests to other models")

    # -- steps --

    def measure_model(self, name: str) -> None:
        """First request, warm requests, then forced cold starts, each followed by one to the floor model (step 3)."""
        st = self.stats[name]
        st.first = self.ask(name)
        say(
            f"{name}: first request {st.first.client_ms:.2f} ms (cold={st.first.cold}, "
            f"engine {st.first.engine_ms:.2f} ms, correct={st.first.correct})"
        )
        for _ in range(self.args.warm):
            a = self.ask(name)
            if not a.cold:
                st.warm.append(a.client_ms)
        with self._floor_model(name) as floor:
            for i in range(self.args.recold):
                touched = self.evict_model(name)
                a = self.ask(name)
                if a.cold:
                    st.colds.append(a)
                say(
                    f"{name}: cold start {i + 1}/{self.args.recold} after {touched} other request(s): client "
                    f"{a.client_ms:.2f} ms, backend execute {a.backend_ms or math.nan:.2f} ms, engine "
                    f"{a.engine_ms:.2f} ms (cold={a.cold}, correct={a.correct})"
                )
                if floor is not None and self.client is not None:  # the same client path, a moment later
                    self.floor.setdefault(name, []).append(self.client.infer(floor, name, ("output",)).client_ms)
        p50, p99 = _ms(st.warm), _ms(st.warm, 99)
        say(f"{name}: warm p50 {p50 or math.nan:.2f} ms, p99 {p99 or math.nan:.2f} ms over {len(st.warm)} requests")
        if name in self.floor:
            say(f"{name}: Triton's floor p50 {_ms(self.floor[name]) or math.nan:.2f} ms")

    @contextlib.contextmanager
    def _floor_model(self, model: str) -> Iterator[str | None]:
        """`model`'s floor model, loaded and past its first requests; None (and an error noted) if it fails."""
        assert self.client is not None
        c, name = self.client, f"{model}-floor"
        loaded = ready = False
        try:
            write_model(self.lay.repo, name, floor_config(name, model, self.args, self.lay), FLOOR_MODEL_PY)
            c.client.load_model(name, headers=c.headers, client_timeout=120)
            loaded = True
            for _ in range(3):  # the stub's first requests import and allocate: not the floor
                c.infer(name, model, ("output",))
            ready = True
        except Exception as exc:  # the cold starts are measured without it
            self.errors.append(f"floor model {name}: {type(exc).__name__}: {exc}")
            say(f"FAILED floor model {name}: {exc}")
        try:
            yield name if ready else None
        finally:
            if loaded:  # also when its first requests failed: it must not stay loaded for the rest of the run
                c.client.unload_model(name, headers=c.headers, client_timeout=120)

    def eviction_run(self) -> None:
        """Round-robin passes over the eviction instances under the budget (step 4)."""
        assert self.cfg is not None
        time.sleep(METRICS_SETTLE_S)
        before = scrape_metrics(self.cfg.url("metrics"))
        prev = self.resident(self.snapshot())
        requests = colds = wrong = transitions = 0
        peak = 0
        for r in range(self.args.rounds):
            for name in self.evicts:
                a = self.ask(name)
                requests, colds, wrong = requests + 1, colds + int(a.cold), wrong + int(not a.correct)
                if a.cold and self.stats[name].answers > 1:  # an instance's first answer pays one-time costs
                    self.evict_samples.append(a)
                snap = self.snapshot()
                now = self.resident(snap)
                transitions += sum(1 for k, was in prev.items() if was and not now.get(k, False))
                prev, peak = now, max(peak, self.used_bytes(snap))
            say(f"eviction run: round {r + 1}/{self.args.rounds} done, {colds} cold starts, {wrong} wrong so far")
        time.sleep(METRICS_SETTLE_S)
        after = scrape_metrics(self.cfg.url("metrics"))

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        self.evict_run = {
            "requests": requests,
            "cold_starts": colds,
            "wrong": wrong,
            "evictions_observed": transitions,
            "evictions_metric_delta": delta("deepplan_evictions_total"),
            "cold_starts_metric_delta": delta("deepplan_cold_starts_total"),
            "peak_used_bytes": peak,
            "budget_bytes": self.lay.budget,
            "budget_respected": peak <= self.lay.budget,
            "metrics_after": after,
        }
        say(
            f"eviction run: {requests} requests, {colds} cold starts, {transitions} evictions, peak "
            f"{peak / 2**20:.1f} MiB of {self.lay.budget / 2**20:.1f} MiB budget, all correct: {wrong == 0}"
        )

    def load_compare(self, model: str) -> None:
        """Plain Python model vs. a fresh deepplan model, both loaded through the model-control API (step 6)."""
        st = self.stats[model]
        device = "cuda:0" if self.lay.gpu else "cpu"
        plain = f"{model}-python"
        config = plain_config(plain, model, self.refs[model].checkpoint, device)
        write_model(self.lay.repo, plain, config, PLAIN_MODEL_PY)
        api, total, answer = self._timed_load(plain, model, with_cold=False)
        st.loads.update(triton_load_api_ms=api, triton_load_ms=total, triton_correct=answer.correct)
        say(f"{plain}: load API {api:.0f} ms, ready+first answer {total:.0f} ms, correct={answer.correct}")
        fresh = f"{model}-load"
        write_model(self.lay.repo, fresh, deepplan_config(fresh, model, self.args, self.lay))
        api, total, answer = self._timed_load(fresh, model, with_cold=True)
        st.loads.update(
            deepplan_load_api_ms=api,
            deepplan_load_ms=total,
            deepplan_load_first_cold=answer.cold,
            deepplan_load_first_engine_ms=answer.engine_ms,
            deepplan_load_correct=answer.correct,
        )
        say(f"{fresh}: load API {api:.0f} ms, ready+first (cold) answer {total:.0f} ms, correct={answer.correct}")

    def _timed_load(self, name: str, model: str, with_cold: bool) -> tuple[float, float, Answer]:
        assert self.client is not None
        c = self.client
        t0 = time.perf_counter()
        c.client.load_model(name, headers=c.headers, client_timeout=300)
        try:
            t1 = time.perf_counter()
            answer = c.infer(name, model, ("output", "cold_start") if with_cold else ("output",))
            t2 = time.perf_counter()
        finally:  # never leave it loaded (the plain model holds device memory outside the budget)
            try:
                c.client.unload_model(name, headers=c.headers, client_timeout=120)
            except Exception as exc:  # the numbers stand; an unload failure is only reported
                self.errors.append(f"unload {name}: {exc}")
        return (t1 - t0) * 1e3, (t2 - t0) * 1e3, answer

    def run(self) -> None:
        """Steps 3 to 6 (the server is up)."""
        self.step("load the other models", self.load_rest)
        for model in self.args.models:
            self.step(f"cold/warm latency of {model}", functools.partial(self.measure_model, model))
        self.step("eviction run", self.eviction_run)
        if not self.args.skip_load_compare:
            for model in self.args.models[: 1 if self.args.quick else None]:
                self.step(f"model-control API loads of {model}", functools.partial(self.load_compare, model))

    def stop(self) -> None:
        """Stop the server (always) and close the log."""
        if self.server is not None and self.server.pid is not None:
            say("stopping tritonserver")
            code = self.server.stop()
            say(f"tritonserver exited with code {code}")
            self.server.wait_output_closed()  # an engine host's last lines (it lingers a moment) go in server.log
        self.log.close()

    # -- results --

    @property
    def all_correct(self) -> bool:
        """Every answer (and both load checks) matched the reference, and there were answers."""
        answers = sum(s.answers for s in self.stats.values())
        loads_ok = all(v is not False for s in self.stats.values() for k, v in s.loads.items() if "correct" in k)
        return answers > 0 and all(s.wrong == 0 for s in self.stats.values()) and loads_ok

    def rows(self, gpu: str, date: str) -> list[dict[str, Any]]:
        """One row per listed model, and one for the eviction instances together."""
        rows = [self._row(m, [m], gpu, date) for m in self.args.models]
        rows.append(self._row(f"{self.first}-evict-x{len(self.evicts)}", self.evicts, gpu, date))
        return rows

    def _row(self, label: str, names: list[str], gpu: str, date: str) -> dict[str, Any]:
        group = [self.stats[n] for n in names]
        evict_group = label not in self.stats
        # Listed models: their forced cold starts; eviction instances: cold starts of the eviction run.
        colds = self.evict_samples if evict_group else group[0].colds
        info = self.log.ready.get(names[0], {})
        client = _ms([a.client_ms for a in colds])
        engine = _ms([a.engine_ms for a in colds])
        first, loads, ev = group[0].first, group[0].loads, self.evict_run
        floor = _ms(self.floor.get(self._zoo_name(names[0]), []))
        overhead = client - engine if client is not None and engine is not None else None
        return {
            "model": label,
            "engine": info.get("engine", self.args.engine),
            "graphs": not self.args.eager and self.lay.gpu,
            "process": info.get("process", ""),
            "devices": "+".join(info.get("devices", [])),
            "pt": len(info.get("devices", [])) > 1,
            "pt_peer_layers": peer_layers(self.plans, self._zoo_name(names[0]), gpu, *self._variant(info)),
            "gpu_name": gpu,
            "client_cold_ms": client,
            "backend_cold_ms": _ms([a.backend_ms for a in colds if a.backend_ms is not None]),
            "engine_cold_ms": engine,
            "ratio": client / engine if client and engine else None,
            "triton_floor_ms": floor,
            "overhead_ms": overhead,
            "own_overhead_ms": overhead - floor if overhead is not None and floor is not None else None,
            "cold_samples": len(colds),
            "first_client_cold_ms": first.client_ms if first else None,
            "first_engine_cold_ms": first.engine_ms if first else None,
            "client_warm_p50_ms": _ms(group[0].warm),
            "client_warm_p99_ms": _ms(group[0].warm, 99),
            "triton_load_ms": loads.get("triton_load_ms"),
            "triton_load_api_ms": loads.get("triton_load_api_ms"),
            "deepplan_load_ms": loads.get("deepplan_load_ms"),
            "deepplan_load_api_ms": loads.get("deepplan_load_api_ms"),
            "need_bytes": info.get("need_bytes"),
            "budget_bytes": self.lay.budget,
            "cold_starts": sum(s.cold_starts for s in group),
            "evict_run_requests": ev.get("requests"),
            "evict_run_cold_starts": ev.get("cold_starts"),
            "evictions": ev.get("evictions_observed"),
            "budget_respected": ev.get("budget_respected"),
            "all_correct": all(s.wrong == 0 for s in group) and sum(s.answers for s in group) > 0,
            "server_ready_s": self.ready_s,
            "all_models_loaded_s": self.all_loaded_s,
            "date": date,
            **self._trace_columns(names),
        }

    def _trace_columns(self, names: list[str]) -> dict[str, float | None]:
        """Median phase times of the models' cold requests, from the backend's trace lines."""
        traces = [t for n in names for t in self.log.cold_traces.get(n, [])]
        return {f"trace_{p}_ms": _ms([t[p] for t in traces if p in t]) for p in TRACE_PHASES}

    def _zoo_name(self, name: str) -> str:
        return self.first if name in self.evicts else name

    def _variant(self, info: dict[str, Any]) -> tuple[str, int]:
        engine = info.get("engine", self.args.engine)
        return engine, len(info.get("devices", [])) or 1

    def report(self, gpu: str, num_gpus: int) -> dict[str, Any]:
        """The JSON document of the run."""
        try:
            self.plans = plan_summary(self.lay.plans)
        except Exception as exc:  # evidence only: the numbers stand without it
            self.errors.append(f"reading the plans: {type(exc).__name__}: {exc}")
        date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return {
            "date": date,
            "gpu_name": gpu,
            "num_gpus": num_gpus,
            "torch": torch.__version__,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
            "budget_bytes": self.lay.budget,
            "server_ready_s": self.ready_s,
            "all_models_loaded_s": self.all_loaded_s,
            "startup_load_ms": self.load_ms,
            "rows": self.rows(gpu, date),
            "eviction_run": self.evict_run,
            "served_on": self.log.ready,
            "pt_evidence": (
                "devices: the backend's 'deepplan: <instance> ready: ... devices=[...]' log line; "
                "pt_peer_layers and plans: layers the served plan variant loads through peer GPUs"
            ),
            "plans": self.plans,
            "per_model": {
                name: {
                    "answers": s.answers,
                    "cold_starts": s.cold_starts,
                    "wrong": s.wrong,
                    "max_abs_diff": s.max_abs_diff,
                    "loads": s.loads,
                    "cold_client_ms": [a.client_ms for a in s.colds],
                    "cold_engine_ms": [a.engine_ms for a in s.colds],
                    "warm_client_ms": s.warm,
                }
                for name, s in self.stats.items()
            },
            "floor_client_ms": self.floor,
            "all_correct": self.all_correct,
            "errors": self.errors,
            "tolerance": {"rtol": RTOL, "atol": ATOL},
        }


# ---- output ------------------------------------------------------------------------------------------------------


def write_outputs(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``triton_coldstart.csv`` (one row per model) and ``triton_coldstart.json`` (everything)."""
    csv_path, json_path = out / "triton_coldstart.csv", out / "triton_coldstart.json"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in doc["rows"]:
            writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return csv_path, json_path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else value


def print_table(doc: dict[str, Any]) -> None:
    """The short summary table."""

    def f(v: Any, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)

    print(
        f"\nTriton cold starts on {doc['gpu_name']} x{doc['num_gpus']} "
        f"(server ready in {f(doc['server_ready_s'], '.1f')} s, "
        f"budget {doc['budget_bytes'] / 2**20:.1f} MiB per device)"
    )
    head = (
        "model",
        "devices",
        "cold client",
        "cold engine",
        "ratio",
        "floor",
        "own",
        "warm p50",
        "warm p99",
        "triton load",
        "deepplan load",
        "colds",
        "correct",
    )
    print("  ".join(f"{h:>13}" for h in head))
    for r in doc["rows"]:
        cells = (
            r["model"],
            r["devices"] or "-",
            f(r["client_cold_ms"]),
            f(r["engine_cold_ms"]),
            f(r["ratio"], ".3f"),
            f(r["triton_floor_ms"]),
            f(r["own_overhead_ms"]),
            f(r["client_warm_p50_ms"]),
            f(r["client_warm_p99_ms"]),
            f(r["triton_load_ms"], ".0f"),
            f(r["deepplan_load_ms"], ".0f"),
            f(r["cold_starts"]),
            f(r["all_correct"]),
        )
        print("  ".join(f"{c:>13}" for c in cells))
    ev = doc["eviction_run"]
    if ev:
        print(
            f"eviction run: {ev['requests']} requests, {ev['cold_starts']} cold starts, {ev['evictions_observed']} "
            f"evictions (metric delta {ev['evictions_metric_delta']:.0f}), peak {ev['peak_used_bytes']} bytes <= "
            f"budget: {ev['budget_respected']}"
        )
    for r in doc["rows"]:
        if r["triton_load_ms"] and r["client_cold_ms"]:
            print(
                f"{r['model']}: plain Triton Python model ready and answering after {r['triton_load_ms']:.0f} ms; "
                f"deepplan model loaded after {f(r['deepplan_load_ms'], '.0f')} ms, then cold starts in "
                f"{r['client_cold_ms']:.2f} ms (the plain load takes "
                f"{r['triton_load_ms'] / r['client_cold_ms']:.0f}x as long)"
            )
    print(
        "latencies in ms; ratio = client / engine cold latency (target <= 1.2); floor = Triton's own latency for the"
        " same request to a Python model that computes nothing; own = client - engine - floor; all answers correct:",
        doc["all_correct"],
    )
    for e in doc["errors"]:
        print(f"ERROR {e}")


def device_info() -> tuple[bool, str, int]:
    """(GPU present, name used in plans, number of GPUs)."""
    if torch.cuda.is_available():
        return True, torch.cuda.get_device_name(0), torch.cuda.device_count()
    return False, "cpu", 0


def preflight() -> None:
    """Fail early (before building anything): no Python backend stub for this Python, or no gRPC client.

    Raises:
        install.InstallError: with the reason.
    """
    install.find_triton_dist().stub_for(install.current_python_version())
    try:
        _grpc_module()
    except Exception as exc:  # ImportError, or protobuf refusing the client's generated code
        raise install.InstallError(
            f"tritonclient.grpc cannot be imported ({type(exc).__name__}: {exc}); it needs grpcio, protobuf (at "
            "least the version its generated code names), numpy, packaging and ml_dtypes"
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the exit code says whether the run was complete and correct."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ[TRACE_ENV] = "1"  # the server inherits it: per-request phase lines for the trace_* columns
    try:
        preflight()
    except install.InstallError as exc:
        say(f"error: {exc}")
        return 2
    gpu, gpu_name, num_gpus = device_info()
    budget = resolve_budget(args)
    say(f"devices: {num_gpus} x {gpu_name}" if gpu else "devices: CPU only")
    with (
        tempfile.TemporaryDirectory(prefix="deepplan-coldstart-") as tmp,
        scratch_state_dir("deepplan-coldstart-state-") as state,
    ):
        lay = Layout(args.out, Path(tmp), budget, gpu, Path(state))
        build_repository(args, lay)
        say(
            f"repository: {len(args.models)} model(s) + {args.instances} eviction instances of {args.models[0]}, "
            f"budget {budget / 2**20:.1f} MiB per device, plans in {lay.plans}"
        )
        bench = Bench(args, lay)
        no_server = None
        try:
            bench.start()
            bench.run()
        except (serve.ServeError, install.InstallError) as exc:
            no_server = f"the server did not start: {exc}"
            say(f"error: {no_server}")
        except Exception as exc:  # e.g. the reference model: record it, still stop the server and write results
            bench.errors.append(f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            bench.stop()
        doc = bench.report(gpu_name, num_gpus)
        if no_server:
            doc["errors"].insert(0, no_server)
        csv_path, json_path = write_outputs(doc, args.out)
    print_table(doc)
    say(f"wrote {csv_path}, {json_path} and {args.out / 'server.log'}")
    draw_beside(csv_path, draw_breakdown, BreakdownError, "benchmark.coldstart_breakdown", say)
    if no_server:
        return 2
    if doc["errors"] or not doc["all_correct"]:
        say("FAILED: " + ("; ".join(doc["errors"]) or "some answers differ from the reference"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
