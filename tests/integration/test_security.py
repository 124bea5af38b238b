"""Safe by default, against the real tritonserver and the real deepplan backend (CPU, one server for the file).

- inference, health and metadata need no token; loading a model through the API needs it (HTTP and gRPC, also
  with a config override, the remote-code vector); with it, a deepplan model loads and plans;
- a deepplan config pointing outside the roots (``..``, an absolute path, a symlink in the model folder) fails
  to load with a clear error in the load response, and the server and the other models stay healthy;
- corrupted plan files dropped into the plan repository are replaced by a fresh plan at the next load
  (the few hundred generated ones go through the repository API in tests/unit/test_path_policy.py).
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import numpy as np
import pytest

from deepplan_backend import serve
from deepplan_backend.repository import config_pbtxt, write_model
from deepplan_backend.runtime.path_policy import ALLOWED_ROOTS_ENV
from deepplan_backend.runtime.plan import PlanError, PlanKey
from deepplan_backend.runtime.plan_messages import PlanFileMessage
from deepplan_backend.runtime.plan_repository import list_plans, load_plan, plan_path, read_plan
from deepplan_backend.runtime.serve_settings import PLAN_DIR_ENV
from tests.triton_server import running_triton

pytestmark = [pytest.mark.triton, pytest.mark.slow]

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

ESCAPES = {  # model name -> parameter model
    "escape-dotdot": "../../outside",
    "escape-abs": "/etc",
    "escape-link": "weights",  # <model>/weights -> <root>/outside
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("security")
    repo, plans, outside = root / "repo", root / "plans", root / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"model_type": "bert"}))
    write_model(repo, "open", config_pbtxt("open", "tiny-bert", parameters={"engine": "demand"}))
    with pytest.MonkeyPatch.context() as env:  # the server (and its stubs) inherit this environment
        env.setenv(PLAN_DIR_ENV, str(plans))  # the operator's plan repository: a root for every model
        env.delenv(ALLOWED_ROOTS_ENV, raising=False)
        with running_triton(repo, ready_timeout_s=120) as srv:
            yield Served(srv, repo, plans, outside)


class Served:
    """The running server plus its model repository, plan repository and a folder outside every root."""

    def __init__(self, srv, repo, plans, outside) -> None:
        self.srv, self.repo, self.plans, self.outside = srv, repo, plans, outside
        self.http_url, self.grpc_url, self.server = srv.http_url, srv.grpc_url, srv.server
        self.http_headers, self.grpc_headers, self.log = srv.http_headers, srv.grpc_headers, srv.log


def http(srv):
    return httpclient.InferenceServerClient(srv.http_url)


def infer(srv, model: str) -> np.ndarray:
    x = np.random.default_rng(0).integers(0, 1000, (1, 8), dtype=np.int64)
    t = httpclient.InferInput("input_ids", list(x.shape), "INT64")
    t.set_data_from_numpy(x)
    return http(srv).infer(model, [t]).as_numpy("output")  # no token


def grpc_load(srv, name: str) -> None:
    """Load with the token over gRPC (its client may be used from several threads, unlike the HTTP one)."""
    grpcclient.InferenceServerClient(srv.grpc_url).load_model(name, headers=srv.grpc_headers)


def wait_ready(client, name: str, ready: bool, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.is_model_ready(name) != ready:
        assert time.monotonic() < deadline, f"{name} ready={not ready} after {timeout_s} s"
        time.sleep(0.1)


def assert_healthy(srv) -> None:
    client = http(srv)
    assert client.is_server_live() and client.is_model_ready("open")
    assert srv.server.poll() is None, "tritonserver exited"
    assert infer(srv, "open").shape == (1, 64)


def test_inference_health_and_metadata_need_no_token(server):
    client, grpc = http(server), grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and grpc.is_server_ready()
    assert client.get_model_metadata("open")["name"] == "open"
    assert grpc.get_model_config("open").config.backend == "deepplan"
    assert infer(server, "open").shape == (1, 64)
    x = np.zeros((1, 4), dtype=np.int64)
    t = grpcclient.InferInput("input_ids", [1, 4], "INT64")
    t.set_data_from_numpy(x)
    assert grpc.infer("open", [t]).as_numpy("output").shape == (1, 64)


def test_loading_needs_the_token_and_then_a_deepplan_model_loads(server):
    write_model(server.repo, "planned", config_pbtxt("planned", "tiny-bert", parameters={"engine": "deepplan"}))
    client, grpc = http(server), grpcclient.InferenceServerClient(server.grpc_url)
    override = json.dumps({"backend": "deepplan", "parameters": {"model": {"string_value": "/etc"}}})
    refused = [
        lambda: client.load_model("planned"),
        lambda: client.load_model("planned", headers={serve.ADMIN_HEADER_KEY: "wrong"}),
        lambda: client.load_model("planned", config=override),  # the config-override (remote code) vector
        lambda: grpc.load_model("planned"),
        lambda: grpc.load_model("planned", headers={serve.GRPC_ADMIN_HEADER_KEY: "wrong"}),
        lambda: client.unload_model("open"),
    ]
    for call in refused:
        with pytest.raises(InferenceServerException, match="restricted"):
            call()
    assert not client.is_model_ready("planned") and client.is_model_ready("open")

    client.load_model("planned", headers=server.http_headers)
    wait_ready(client, "planned", True)
    assert infer(server, "planned").shape == (1, 64)
    plans = list_plans(server.plans)
    assert [p.name.split(".")[0] for p in plans] == ["tiny-bert"], "planned at load into the server's plan repository"
    assert read_plan(plans[0]).key.gpu_name == "cpu"


def test_configs_pointing_outside_the_roots_fail_to_load_clearly(server):
    for name, model in ESCAPES.items():
        write_model(server.repo, name, config_pbtxt(name, model, output_dim=64, parameters={"engine": "demand"}))
    (server.repo / "escape-link" / "weights").symlink_to(server.outside)
    client = http(server)

    def load(name: str) -> str:
        with pytest.raises(InferenceServerException) as err:
            grpc_load(server, name)
        return str(err.value)

    with concurrent.futures.ThreadPoolExecutor(len(ESCAPES)) as pool:  # one stub start each: in parallel
        errors = dict(zip(ESCAPES, pool.map(load, ESCAPES), strict=True))
    for name, model in ESCAPES.items():
        msg = errors[name]
        assert "parameter model" in msg and "outside the allowed roots" in msg, (name, msg, server.log())
        assert repr(model) in msg, msg  # names the offending value
        assert not client.is_model_ready(name)
    assert "through a symlink" in errors["escape-link"]
    assert str(server.outside) in errors["escape-dotdot"] and " /etc, outside" in errors["escape-abs"]
    assert "outside the allowed roots" in server.log()
    # (--strict-readiness: Triton's server-ready turns false once a model failed to load; live stays true and
    # every loaded model keeps serving)
    assert_healthy(server)
    assert infer(server, "planned").shape == (1, 64)


def _bad_slot(good: bytes, key: PlanKey) -> bytes:
    """A well-formed plan for `key` whose schedule sends a layer to device slot 7 of a 1-device variant."""
    msg = PlanFileMessage()
    msg.ParseFromString(good)
    msg.key.seq_len = key.seq_len
    msg.variants[-1].sources[0] = 7
    return msg.SerializeToString()


# model name -> (its seq_len, hence its own plan file; how to corrupt a good plan). Each costs a stub that
# re-plans (~10 s of CPU here): two through the server; the few hundred generated ones (huge counts, bit flips,
# splices, junk...) go through the repository API in tests/unit/test_path_policy.py.
CORRUPTIONS = {
    "replan-truncated": (8, lambda good, key: good[: len(good) // 3]),
    "replan-slot": (24, _bad_slot),
}


def test_corrupted_plan_files_are_replaced_at_the_next_load(server):
    client = http(server)
    if not client.is_model_ready("planned"):
        pytest.skip("needs test_loading_needs_the_token_and_then_a_deepplan_model_loads")
    (good_path,) = list_plans(server.plans)
    good = good_path.read_bytes()
    paths = {}
    for name, (seq, corrupt) in CORRUPTIONS.items():
        params = {"engine": "deepplan", "seq_len": str(seq)}
        write_model(server.repo, name, config_pbtxt(name, "tiny-bert", parameters=params))
        key = PlanKey("tiny-bert", 1, seq, "float32", "cpu")
        paths[name] = plan_path(server.plans, key)
        paths[name].write_bytes(corrupt(good, key))  # dropped in before the model's first load
        with pytest.raises(PlanError):
            load_plan(server.plans, key, None)
    with concurrent.futures.ThreadPoolExecutor(len(CORRUPTIONS)) as pool:  # grpc clients are thread-safe
        list(pool.map(lambda name: grpc_load(server, name), CORRUPTIONS))
    for name, path in paths.items():
        assert client.is_model_ready(name), (name, server.log())
        plan = read_plan(path)  # re-planned: a valid plan again
        assert plan.key.seq_len == CORRUPTIONS[name][0]
        assert infer(server, name).shape == (1, 64), name
    assert server.log().count("planned now") >= 1 + len(CORRUPTIONS)
    assert_healthy(server)
