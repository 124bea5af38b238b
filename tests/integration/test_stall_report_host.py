"""`DEEPPLAN_STALL_DUMP_MS` inside a real engine host (CPU): every slow device job dumps stacks, the host survives.

Session 11's hosts died of the report itself (faulthandler's watchdog walked threads that were ending, under a
host that starts and ends a thread per connection). Here the limit is so low that every device job dumps, while
three models connect, cold-start and evict one another through one host.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from deepplan_backend.hosting.stall_report import MAX_DUMPS, STALL_DUMP_ENV
from deepplan_backend.repository import config_pbtxt, write_model
from deepplan_backend.runtime.residency import Residency
from tests.plain_outputs import plain_output
from tests.triton_server import running_triton

pytestmark = [pytest.mark.triton, pytest.mark.slow]

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

MODELS = ("bert-x", "bert-y", "bert-z")
BUDGET = 1_300_000  # two tiny-berts (576 256 bytes each), not three: every third request evicts


def test_every_slow_device_job_dumps_stacks_and_the_host_survives(tmp_path, monkeypatch):
    repo, plans, state = tmp_path / "repo", tmp_path / "plans", tmp_path / "residency"
    common = {"plan_repository": str(plans), "residency_dir": str(state), "budget": str(BUDGET), "engine": "pipeline"}
    for name in MODELS:
        write_model(repo, name, config_pbtxt(name, "tiny-bert", parameters=common))
    monkeypatch.setenv("DEEPPLAN_ALLOWED_ROOTS", f"{plans}:{state}")
    monkeypatch.setenv(STALL_DUMP_ENV, "0.05")
    x = np.random.default_rng(0).integers(0, 1000, (1, 12), dtype=np.int64)
    want = plain_output("tiny-bert", input_ids=x)
    with running_triton(repo, ready_timeout_s=120) as srv:
        client = tritonclient_grpc.InferenceServerClient(srv.grpc_url)
        ids = tritonclient_grpc.InferInput("input_ids", list(x.shape), "INT64")
        ids.set_data_from_numpy(x)
        colds, hosts = 0, set()
        for i in range(4 * MAX_DUMPS):  # past the per-host dump limit
            result = client.infer(MODELS[i % 3], [ids])
            np.testing.assert_allclose(result.as_numpy("output"), want, rtol=1e-4, atol=1e-5)
            colds += int(result.as_numpy("cold_start")[0, 0])
            hosts |= {e["pid"] for e in Residency(state).snapshot()["models"].values()}
        log = srv.log()  # its last 200 lines
        assert len(hosts) == 1, f"the engine host died and was replaced: owners {sorted(hosts)}"
        os.kill(hosts.pop(), 0)  # still alive
    assert colds >= 2 * MAX_DUMPS  # the models kept evicting one another: device jobs with threads at work
    assert "deepplan stall report (pid" in log and "device job running for" in log
    assert "Fatal Python error" not in log
