"""The real tritonserver from the wheel, started like ``python3 -m deepplan_backend serve``, on this CPU machine.

A throwaway ``backend: "deepplan"`` implementation (doubling its input) is installed from a temporary source
folder, which exercises the whole install + launch path without the real adapter.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from deepplan_backend import serve
from deepplan_backend.repository import write_model

pytestmark = pytest.mark.triton


def _import_from_repo_root(name: str):
    # pytest's default import mode puts tests/integration (not the repo root) on sys.path, so `tests.*` is
    # not importable unless pyproject sets `pythonpath = ["."]`; with that setting this is a plain import.
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(name)


triton_server = _import_from_repo_root("tests.triton_server")

BACKEND_MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils

import deepplan_backend.install  # the checkout must be importable inside the stub


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", (2 * x).astype(np.float32))]))
        return responses
"""

CONFIG = """
backend: "deepplan"
max_batch_size: 0
input [{ name: "INPUT", data_type: TYPE_FP32, dims: [-1] }]
output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [-1] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""


def make_backend_and_repo(root: Path) -> tuple[Path, Path]:
    source = root / "backend_src"
    source.mkdir()
    (source / "model.py").write_text(BACKEND_MODEL_PY)
    repo = root / "repo"
    for name in ("double", "spare"):
        write_model(repo, name, CONFIG)
    return source, repo


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    source, repo = make_backend_and_repo(tmp_path_factory.mktemp("serve"))
    with triton_server.running_triton(repo, backend_source=source) as server:
        yield server


def test_http_and_grpc_inference_on_cpu(triton):
    x = np.arange(4, dtype=np.float32)

    http = httpclient.InferenceServerClient(triton.http_url)
    inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(http.infer("double", [inp]).as_numpy("OUTPUT"), 2 * x)
    assert http.get_model_config("double")["instance_group"][0]["kind"] == "KIND_CPU"

    grpc = grpcclient.InferenceServerClient(triton.grpc_url)
    ginp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    np.testing.assert_array_equal(grpc.infer("double", [ginp]).as_numpy("OUTPUT"), 2 * x)
    # health and metadata stay open without the token
    assert grpc.is_server_ready() and grpc.get_model_metadata("double").name == "double"


def wait_model_ready(client, name: str, ready: bool, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while client.is_model_ready(name) != ready:
        assert time.monotonic() < deadline, f"{name} ready={not ready} after {timeout} s"
        time.sleep(0.1)


def test_model_repository_api_needs_the_token(triton):
    http = httpclient.InferenceServerClient(triton.http_url)
    grpc = grpcclient.InferenceServerClient(triton.grpc_url)

    with pytest.raises(InferenceServerException, match="restricted"):
        http.unload_model("spare")
    with pytest.raises(InferenceServerException, match="restricted"):
        http.unload_model("spare", headers={serve.ADMIN_HEADER_KEY: "wrong"})
    with pytest.raises(InferenceServerException, match="restricted"):
        grpc.unload_model("spare")
    with pytest.raises(InferenceServerException, match="restricted"):
        grpc.get_model_repository_index()
    assert http.is_model_ready("spare")

    http.unload_model("spare", headers=triton.http_headers)
    wait_model_ready(http, "spare", False)
    grpc.load_model("spare", headers=triton.grpc_headers)
    wait_model_ready(http, "spare", True)
    names = {m["name"] for m in http.get_model_repository_index(headers=triton.http_headers)}
    assert names == {"double", "spare"}


def listening_addresses(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of the LISTEN sockets on ``port``, read from /proc/net/tcp{,6}."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(bytes.fromhex(host_hex[i : i + 8])[::-1] for i in range(0, len(host_hex), 8))
            found.append(ipaddress.ip_address(raw))
    return found


def test_default_binding_is_loopback(triton):
    for url in (triton.http_url, triton.grpc_url, triton.metrics_url):
        port = int(url.rsplit(":", 1)[1])
        addresses = listening_addresses(port)
        assert addresses, f"nothing listens on {port}"
        for a in addresses:
            mapped = a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) else None
            assert (mapped or a).is_loopback, f"port {port} listens on {a}"
    assert f"Started HTTPService at 127.0.0.1:{triton.http_url.rsplit(':', 1)[1]}" in triton.log()


def test_a_model_that_fails_to_load_stops_the_start_with_its_error(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('boom: no plan')\n"
    )
    write_model(tmp_path / "repo", "broken", CONFIG)
    with pytest.raises(serve.ServerExitedError) as exc:
        with triton_server.running_triton(tmp_path / "repo", backend_source=source):
            pass
    message = str(exc.value)
    assert "failed to load 'broken' version 1: Internal: RuntimeError: boom: no plan" in message
    assert "CudaDriverHelper" not in message


def cli(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "deepplan_backend", "serve", *args],
        cwd=serve.REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_port_in_use_is_a_clear_error(tmp_path):
    http, grpc, metrics = triton_server.free_ports(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", grpc))
        taken.listen()
        proc = cli("--model-repository", str(tmp_path), "--http-port", str(http), "--grpc-port", str(grpc),
                   "--metrics-port", str(metrics))  # fmt: skip
        _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert f"port {grpc} (gRPC) on 127.0.0.1 is already in use" in err
    assert "--grpc-port" in err


def test_sigint_stops_the_server_cleanly(tmp_path):
    source, repo = make_backend_and_repo(tmp_path)
    http, grpc, metrics = triton_server.free_ports(3)
    env = {**os.environ, serve.CACHE_DIR_ENV: str(tmp_path / "cache"), serve.ADMIN_TOKEN_ENV: "from-env-token"}
    proc = cli("--model-repository", str(repo), "--backend-source", str(source), "--http-port", str(http),
               "--grpc-port", str(grpc), "--metrics-port", str(metrics), env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "not ready after 60 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert took < 10, f"stopping took {took:.1f} s"
    assert "tritonserver stopped (exit code 0)" in err
    assert "from-env-token" not in out + err  # a token from the environment is never printed
    pid = int(re.search(r"started tritonserver \(pid (\d+)\)", err).group(1))
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(p) == pid]
    assert not leftovers, f"processes of the server's group still alive: {leftovers}"
    serve.check_ports_free("127.0.0.1", {"HTTP": http, "gRPC": grpc, "metrics": metrics})


def _pgid(proc_dir: Path) -> int | None:
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[2])  # fields after "(comm)": state ppid pgrp


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_killed_stubs_leave_no_shared_memory_behind(tmp_path):
    """A SIGKILLed stub's /dev/shm region outlives it (Triton starts a new stub with a new region); the launcher
    removes its launch's regions once the server is gone."""
    source, repo = make_backend_and_repo(tmp_path)
    x = np.arange(4, dtype=np.float32)
    with triton_server.running_triton(repo, backend_source=source) as server:
        prefix = server.server.shm_prefix
        assert prefix and list(Path("/dev/shm").glob(f"{prefix}*")), "the stubs' regions exist while serving"
        http = httpclient.InferenceServerClient(server.http_url)
        inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        pid = server.server.pid
        for _ in range(2):
            for stub in [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]:
                os.kill(stub, signal.SIGKILL)
            time.sleep(0.5)
            for _ in range(3):  # the first request after the kill may fail; Triton then restarts the stub
                try:
                    http.infer("double", [inp])
                except InferenceServerException:
                    time.sleep(0.5)
    assert not list(Path("/dev/shm").glob(f"{prefix}*"))


def test_a_stopped_server_leaves_no_engine_host_files(tmp_path):
    """The launcher removes its engine hosts' spawn lock; the host and its standby remove their own sockets."""
    from deepplan_backend.hosting.host_client import listener_pid, socket_dir, socket_path
    from deepplan_backend.repository import config_pbtxt
    from deepplan_backend.runtime.residency import server_state_dir

    plans = tmp_path / "plans"
    params = {"engine": "pipeline", "plan_repository": str(plans), "budget": "64MiB"}
    write_model(tmp_path / "repo", "bert", config_pbtxt("bert", "tiny-bert", parameters=params))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPPLAN_ALLOWED_ROOTS", str(plans))
        with triton_server.running_triton(tmp_path / "repo", ready_timeout_s=120) as server:
            host_socket = socket_path(server_state_dir(server.server.pid), 0)
            stem = host_socket.name.rsplit("-", 1)[0]
            deadline = time.monotonic() + 30
            while listener_pid(host_socket.with_suffix(".standby")) is None:  # the standby is up: every file made
                assert time.monotonic() < deadline, sorted(p.name for p in socket_dir().glob(f"{stem}-*"))
                time.sleep(0.1)
            assert host_socket.with_suffix(".lock").exists()
    assert not host_socket.with_suffix(".lock").exists(), "the spawn lock outlived its server"
    deadline = time.monotonic() + 20  # the host lingers a few seconds, then stops its standby
    while left := sorted(p.name for p in socket_dir().glob(f"{stem}-*")):
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(0.1)
