"""The engine host without Triton: models of one target GPU share one host process, answers are right, a bad
config is refused with its reason, a killed host is replaced, and the host exits once its last model is gone."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from deepplan_backend.hosting.host_client import HostedModel, HostError
from deepplan_backend.runtime.residency import STATE_DIR_ENV
from tests.plain_outputs import plain_output


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "residency"))
    monkeypatch.setenv("DEEPPLAN_ALLOWED_ROOTS", f"{tmp_path / 'plans'}:{tmp_path / 'residency'}")
    for name in ("a", "b", "bad"):
        (tmp_path / "repo" / name / "1").mkdir(parents=True)
    return tmp_path


def _params(root: Path, **extra: str) -> dict[str, str]:
    return {
        "model": "tiny-bert",
        "engine": "pipeline",
        "plan_repository": str(root / "plans"),
        "budget": "64MiB",
        **extra,
    }


def test_models_share_a_host_and_survive_its_death(repo: Path) -> None:
    x = np.random.default_rng(0).integers(0, 1000, (2, 12), dtype=np.int64)
    want = plain_output("tiny-bert", input_ids=x)
    a = HostedModel(_params(repo), repo / "repo" / "a", "a_0_0", 4, None)
    b = HostedModel(_params(repo), repo / "repo" / "b", "b_0_0", 4, None)
    try:
        assert a.info["pid"] == b.info["pid"] != os.getpid()
        assert a.info["model"] == "tiny-bert" and a.info["engine"] == "pipeline"
        (first,) = a.answer([{"input_ids": x}])
        np.testing.assert_allclose(first.output, want, rtol=1e-4, atol=1e-5)
        assert first.cold and first.cold_start_rows().shape == (2, 2)
        bad, good = b.answer([{"input_ids": x[:, :0]}, {"input_ids": x}])
        assert bad.invalid and "empty sequence" in (bad.error or "")
        np.testing.assert_allclose(good.output, want, rtol=1e-4, atol=1e-5)
        assert a.status().resident_bytes > 0

        old = a.info["pid"]
        os.kill(old, signal.SIGKILL)
        (again,) = a.answer([{"input_ids": x}])  # reconnects: a new host registers the model and cold-starts it
        assert again.error is None, again.error
        np.testing.assert_allclose(again.output, want, rtol=1e-4, atol=1e-5)
        assert again.cold and a.info["pid"] != old
    finally:
        a.close()
        b.close()
    host = a.info["pid"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _running(host):
        time.sleep(0.1)
    assert not _running(host), "the host exits once no model is left"


def test_bad_config_is_refused_with_the_reason(repo: Path) -> None:
    with pytest.raises(HostError, match="parameter engine"):
        HostedModel(_params(repo, engine="warp"), repo / "repo" / "bad", "bad_0_0", 4, None)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
