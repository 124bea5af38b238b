"""The deepplan backend inside the real tritonserver (CPU): outputs, cold starts, metrics, LRU, errors, crashes.

One server for the whole module (starting stubs that import torch is the expensive part on 2 cores):
three tiny-bert copies (pipeline engine) that share a budget fitting two of them, tiny-gpt2 (deepplan engine,
planned at load into a temporary plan repository) and tiny-resnet (demand engine).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from deepplan_backend.repository import config_pbtxt, write_model
from deepplan_backend.runtime.residency import Residency, scratch_state_dir
from tests.plain_outputs import plain_output
from tests.triton_server import running_triton

pytestmark = [pytest.mark.triton, pytest.mark.slow]

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

BERT_BYTES = 576256  # tiny-bert weights: the budget below holds two copies, not three
BUDGET = 1_300_000
BERTS = ("bert-a", "bert-b", "bert-c")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("backend")
    repo, plans = root / "repo", root / "plans"
    # The residency folder in memory, as a server's default one: the host weights go into images there.
    with scratch_state_dir("deepplan-test-backend-") as state_name:
        yield from _serve(repo, plans, Path(state_name))


def _serve(repo: Path, plans: Path, state: Path):
    common = {"plan_repository": str(plans), "residency_dir": str(state), "budget": str(BUDGET)}
    for name in BERTS:
        write_model(repo, name, config_pbtxt(name, "tiny-bert", parameters={**common, "engine": "pipeline"}))
    write_model(repo, "tiny-gpt2", config_pbtxt("tiny-gpt2", "tiny-gpt2", parameters={**common, "engine": "deepplan"}))
    write_model(
        repo, "tiny-resnet", config_pbtxt("tiny-resnet", "tiny-resnet", parameters={**common, "engine": "demand"})
    )
    # The plan and residency folders live beside the repository: allow them explicitly (path policy).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPPLAN_ALLOWED_ROOTS", f"{plans}:{state}")
        with running_triton(repo, ready_timeout_s=120) as srv:
            yield Served(srv, state, plans)
    deadline = time.monotonic() + 20  # the engine host closes its models once their front ends unregistered
    while list((state / "weights").glob("*.img")):
        assert time.monotonic() < deadline, "weights images outlived the server's models"
        time.sleep(0.1)


class Served:
    """The running server plus where its residency state and plans live."""

    def __init__(self, srv, state_dir, plans) -> None:
        self.srv, self.state_dir, self.plans = srv, state_dir, plans
        self.http_url, self.grpc_url, self.metrics_url = srv.http_url, srv.grpc_url, srv.metrics_url
        self.server = srv.server


def ids(batch=2, seq=12, seed=0, vocab=1000):
    return np.random.default_rng(seed).integers(0, vocab, (batch, seq), dtype=np.int64)


def http_infer(srv, model, **arrays):
    client = tritonclient_http.InferenceServerClient(srv.http_url)
    inputs = []
    for name, a in arrays.items():
        t = tritonclient_http.InferInput(
            name,
            list(a.shape),
            "INT64" if a.dtype == np.int64 else "FP32" if a.dtype == np.float32 else str(a.dtype).upper(),
        )
        t.set_data_from_numpy(a)
        inputs.append(t)
    result = client.infer(model, inputs)
    return result.as_numpy("output"), result.as_numpy("cold_start")


def grpc_infer(srv, model, **arrays):
    client = tritonclient_grpc.InferenceServerClient(srv.grpc_url)
    inputs = []
    for name, a in arrays.items():
        t = tritonclient_grpc.InferInput(name, list(a.shape), "INT64" if a.dtype == np.int64 else "FP32")
        t.set_data_from_numpy(a)
        inputs.append(t)
    result = client.infer(model, inputs)
    return result.as_numpy("output"), result.as_numpy("cold_start")


def resident(srv) -> set[str]:
    snap = Residency(srv.state_dir).snapshot()
    return {k.rsplit("_", 2)[0] for k, e in snap["models"].items() if e["resident"]}


def test_lru_eviction_under_a_tiny_budget(server):
    x = ids()
    want = plain_output("tiny-bert", input_ids=x)
    colds = []
    for name in ("bert-a", "bert-b", "bert-a", "bert-c"):
        out, cold = http_infer(server, name, input_ids=x)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
        colds.append(int(cold[0, 0]))
    assert colds == [1, 1, 0, 1]
    assert resident(server) == {"bert-a", "bert-c"}  # bert-b was the least recently used
    out, cold = http_infer(server, "bert-b", input_ids=x)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    assert cold[0, 0] == 1
    assert resident(server) == {"bert-b", "bert-c"}  # now bert-a was
    snap = Residency(server.state_dir).snapshot()
    assert sum(e["bytes"] for e in snap["models"].values()) <= BUDGET
    assert snap["budgets"] == {"cpu": BUDGET}


def test_cold_start_output_then_warm(server):
    x = ids(batch=1, seq=10, seed=1)
    out1, cold1 = grpc_infer(server, "tiny-gpt2", input_ids=x)
    out2, cold2 = grpc_infer(server, "tiny-gpt2", input_ids=x)
    assert cold1.shape == (1, 2) and cold1[0, 0] == 1 and cold1[0, 1] > 0
    assert cold2[0, 0] == 0 and cold2[0, 1] == 0
    np.testing.assert_allclose(out1, plain_output("tiny-gpt2", input_ids=x), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out1, out2)
    assert any(server.plans.iterdir()), "the deepplan engine planned at load and cached the plan"


@pytest.mark.parametrize("infer", [http_infer, grpc_infer], ids=["http", "grpc"])
def test_outputs_equal_transformers(server, infer):
    x = ids(batch=3, seq=9, seed=2)
    mask = np.ones_like(x)
    mask[:, -3:] = 0
    out, _ = infer(server, "bert-a", input_ids=x, attention_mask=mask)
    np.testing.assert_allclose(out, plain_output("tiny-bert", input_ids=x, attention_mask=mask), rtol=1e-4, atol=1e-5)
    px = np.random.default_rng(3).standard_normal((2, 3, 224, 224), dtype=np.float32)
    out, _ = infer(server, "tiny-resnet", pixel_values=px)
    np.testing.assert_allclose(out, plain_output("tiny-resnet", pixel_values=px), rtol=1e-4, atol=1e-4)
    g = ids(batch=2, seq=7, seed=4)
    out, _ = infer(server, "tiny-gpt2", input_ids=g)
    np.testing.assert_allclose(out, plain_output("tiny-gpt2", input_ids=g), rtol=1e-4, atol=1e-4)


def test_concurrent_requests_are_batched_and_correct(server):
    xs = [ids(batch=1, seq=8, seed=10 + i) for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda x: http_infer(server, "bert-c", input_ids=x)[0], xs))
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_allclose(out, plain_output("tiny-bert", input_ids=x), rtol=1e-4, atol=1e-5)


def metrics(server) -> str:
    return urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10).read().decode()


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_show_cold_starts_evictions_and_resident_bytes(server):
    http_infer(server, "bert-a", input_ids=ids())  # publishes bert-a's eviction, if any, and its resident bytes
    deadline = time.monotonic() + 10  # published by a background thread a moment after the response
    while time.monotonic() < deadline:
        text = metrics(server)
        if metric_sum(text, "deepplan_resident_bytes", model="bert-a") == BERT_BYTES:
            break
        time.sleep(0.1)
    assert metric_sum(text, "deepplan_cold_starts_total", model="tiny-gpt2") >= 1
    assert metric_sum(text, "deepplan_cold_starts_total", model="bert-b") >= 2
    assert metric_sum(text, "deepplan_evictions_total") >= 1
    assert metric_sum(text, "deepplan_provisioning_ms_count", model="tiny-gpt2") >= 1
    assert metric_sum(text, "deepplan_provisioning_ms_bucket", model="tiny-gpt2", le="+Inf") >= 1
    assert metric_sum(text, "deepplan_resident_bytes", model="bert-a") == BERT_BYTES


def test_an_evicted_models_metrics_update_without_its_own_request(server):
    for name in ("bert-a", "bert-b", "bert-c"):  # the budget holds two: bert-c's cold start evicts bert-a (LRU)
        http_infer(server, name, input_ids=ids())
    before = metric_sum(metrics(server), "deepplan_evictions_total", model="bert-a")
    http_infer(server, "bert-a", input_ids=ids())  # evicts bert-b
    http_infer(server, "bert-c", input_ids=ids())
    http_infer(server, "bert-b", input_ids=ids())  # evicts bert-a, which gets no request after this
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = metrics(server)
        if metric_sum(text, "deepplan_resident_bytes", model="bert-a") == 0:
            break
        time.sleep(0.25)
    assert metric_sum(text, "deepplan_resident_bytes", model="bert-a") == 0
    assert metric_sum(text, "deepplan_evictions_total", model="bert-a") >= before + 1
    assert metric_sum(text, "deepplan_resident_bytes", model="bert-b") == BERT_BYTES


def test_reloading_a_model_keeps_it_registered(server):
    """Triton loads the new instance before it unloads the old one (same instance name): both must coexist in
    the residency, and the old one's unload must not take the new one's registration with it."""
    x = ids()
    want = plain_output("tiny-bert", input_ids=x)
    client = tritonclient_http.InferenceServerClient(server.http_url)
    config = client.get_model_config("bert-c")
    config["dynamic_batching"] = {"max_queue_delay_microseconds": 2000}  # a changed config: a real reload
    http_infer(server, "bert-c", input_ids=x)
    client.load_model("bert-c", config=json.dumps(config), headers=server.srv.http_headers)
    for _ in range(2):
        out, _ = http_infer(server, "bert-c", input_ids=x)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    deadline = time.monotonic() + 15  # the old instance unloads in the background
    while True:
        keys = [k for k in Residency(server.state_dir).snapshot()["models"] if k.startswith("bert-c_")]
        if len(keys) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(keys) == 1, f"the old instance left the residency, the new one stayed: {keys}"


BAD = [
    ("bert-a", {"input_ids": ids().astype(np.float32)}, "FP32"),  # wrong dtype (Triton checks the declared type)
    ("bert-a", {"input_ids": ids() + 1000}, "out of range"),
    ("bert-a", {"attention_mask": np.ones((2, 4), np.int64)}, "input_ids"),  # missing required input
    ("bert-a", {"input_ids": ids(batch=9)}, "batch"),  # over max_batch_size 8
    ("bert-a", {"input_ids": ids(seq=200)}, "exceeds"),  # longer than the model's 128 positions
    ("bert-a", {"input_ids": ids(), "attention_mask": np.ones((2, 5), np.int64)}, "attention_mask"),
    ("tiny-resnet", {"pixel_values": np.zeros((1, 3, 100, 100), np.float32)}, "shape"),
]


@pytest.mark.parametrize(("model", "arrays", "needle"), BAD, ids=lambda v: v if isinstance(v, str) else "")
def test_bad_requests_get_clear_errors(server, model, arrays, needle):
    with pytest.raises(InferenceServerException) as err:
        http_infer(server, model, **arrays)
    assert needle.lower() in str(err.value).lower(), str(err.value)
    out, _ = http_infer(server, "bert-a", input_ids=ids())
    np.testing.assert_allclose(out, plain_output("tiny-bert", input_ids=ids()), rtol=1e-4, atol=1e-5)


def test_models_share_one_engine_host(server):
    """process: shared (the default): every model's device work runs in one engine host, not in its stub."""
    snap = Residency(server.state_dir).snapshot()
    owners = {e["pid"] for e in snap["models"].values()}
    assert len(snap["models"]) == 5 and len(owners) == 1, snap["models"]
    (host,) = owners
    assert "deepplan_backend.hosting.engine_host" in _cmdline(host)
    assert host not in _children(server.server.pid), "the host runs in its own session, not as a stub"
    http_infer(server, "bert-a", input_ids=ids())  # a front end that has answered, too
    stubs = _children(server.server.pid)
    assert stubs, "tritonserver has no stub processes"
    for stub in stubs:
        try:
            maps = Path(f"/proc/{stub}/maps").read_text()
        except (ProcessLookupError, FileNotFoundError):  # exited since listed: e.g. the stub a reload replaced
            continue
        assert "libtorch" not in maps, f"front end {_cmdline(stub)[:80]} loaded PyTorch (no CUDA, no 300 MB)"


def test_killed_front_end_stub_server_recovers(server):
    """Kill a model's Triton stub (its front end): the host unregisters it; Triton restarts the stub."""
    x = ids()
    want = plain_output("tiny-bert", input_ids=x)
    http_infer(server, "bert-a", input_ids=x)
    (stub,) = [p for p in _children(server.server.pid) if "bert-a_0_0" in _cmdline(p)]
    os.kill(stub, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        k.startswith("bert-a_") for k in Residency(server.state_dir).snapshot()["models"]
    ):
        time.sleep(0.1)
    assert not any(k.startswith("bert-a_") for k in Residency(server.state_dir).snapshot()["models"]), (
        "the host closed the dead front end's model and gave its budget back"
    )
    out, _ = http_infer(server, "bert-b", input_ids=x)  # the others keep serving
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    try:  # the killed model: answered correctly (stub restarted, registered again) or a clear error
        out, _ = http_infer(server, "bert-a", input_ids=x)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    except InferenceServerException as exc:
        assert "stub" in str(exc).lower() or "unhealthy" in str(exc).lower() or "bert-a" in str(exc), str(exc)
    assert tritonclient_http.InferenceServerClient(server.http_url).is_server_live()


def test_killed_engine_host_leaks_no_budget_and_server_recovers(server):
    """Kill the engine host (the residency owner): its budget comes back, a new host serves every model.

    SIGSEGV, as a crash in a native library would: the host must print its stacks and a front end must say that it
    replaced a lost host (session 11's hosts died without a line in the log).
    """
    x = ids()
    want = plain_output("tiny-bert", input_ids=x)
    http_infer(server, "bert-c", input_ids=x)  # bert-c resident, owned by the engine host
    snap = Residency(server.state_dir).snapshot()
    (key,) = [k for k in snap["models"] if k.startswith("bert-c_")]
    pid = snap["models"][key]["pid"]
    assert pid != server.server.pid
    os.kill(pid, signal.SIGSEGV)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid):
        time.sleep(0.1)
    deadline = time.monotonic() + 2  # liveness is trusted for ALIVE_TTL_S (0.2 s) once checked
    while any(e["pid"] == pid for e in Residency(server.state_dir).snapshot()["models"].values()):
        assert time.monotonic() < deadline, "the dead host's budget was not reclaimed"
        time.sleep(0.05)
    # The front ends notice the death themselves: each model registers again before any request asks for it.
    deadline = time.monotonic() + 60
    while not all(f"{name}_0_0#" in _registered_again(server) for name in ("bert-b", "bert-c")):
        assert time.monotonic() < deadline, "the models did not register again without a request"
        time.sleep(0.1)
    # The new host warms them up once it is idle (not inside their registration); after that they are evicted.
    while not all(f"{name}_0_0#" in _lines(server, "deferred warm-up") for name in ("bert-b", "bert-c")):
        assert time.monotonic() < deadline, "the new host never ran the deferred warm-ups"
        time.sleep(0.1)
    # A new host serves each model; all answer correctly (bert-a's stub was killed by the test above).
    for name in ("bert-b", "bert-c"):
        out, cold = http_infer(server, name, input_ids=x)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
        assert cold[0, 0] == 1, f"{name} cold-starts in the new host"
    log = server.srv.log()
    assert "Fatal Python error: Segmentation fault" in log, "the dying host printed no stacks"
    assert "(its host was lost)" in log, "no front end said that it replaced the lost host"
    # The dead host's weights images outlive it: its replacement maps them instead of building them again.
    assert "host weights of tiny-bert (float32) mapped from image" in log
    snap = Residency(server.state_dir).snapshot()
    assert sum(e["bytes"] for e in snap["models"].values()) <= BUDGET
    client = tritonclient_http.InferenceServerClient(server.http_url)
    assert client.is_server_live()


def _registered_again(server) -> str:
    """The server log's 'registered again' lines (front ends that moved to a new engine host)."""
    return _lines(server, "registered again")


def _lines(server, text: str) -> str:
    """The server log's lines holding `text`."""
    return "\n".join(line for line in server.srv.log().splitlines() if text in line)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
