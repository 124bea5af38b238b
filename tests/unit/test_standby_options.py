"""The standby's switches: `DEEPPLAN_STANDBY`'s values, the GPUs a primed standby is told, and their parsing."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from deepplan_backend.hosting import engine_host, standby
from deepplan_backend.runtime.residency import BUDGET_ENV
from deepplan_backend.runtime.serve_settings import ServeSettings


@pytest.mark.parametrize(
    ("value", "want"),
    [(None, "primed"), ("", "primed"), ("primed", "primed"), ("1", "primed"), (" Cold ", "cold"), ("0", "off")],
)
def test_standby_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str | None, want: str) -> None:
    if value is None:
        monkeypatch.delenv(standby.STANDBY_ENV, raising=False)
    else:
        monkeypatch.setenv(standby.STANDBY_ENV, value)
    assert standby.mode() == want


def test_an_unknown_standby_mode_is_said_and_the_default_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(standby.STANDBY_ENV, "warm")
    assert standby.mode() == "primed"
    err = capsys.readouterr().err
    assert "DEEPPLAN_STANDBY='warm'" in err and "cold" in err


def test_a_primed_standby_is_told_its_hosts_gpu(tmp_path: Path) -> None:
    sock = tmp_path / "h-2.sock"
    cmd = standby.spawn_command(sock, 2)
    assert cmd[cmd.index(standby.STANDBY_FLAG) + 1] == str(os.getpid())
    assert cmd[cmd.index(standby.PRIME_FLAG) + 1] == "2"
    assert standby.PRIME_FLAG in standby.spawn_command(sock, 0), "GPU 0 is a GPU to prime, not a missing one"
    assert standby.PRIME_FLAG not in standby.spawn_command(sock), "cold, or a CPU host: nothing to prime"


def test_the_prime_option_parses_a_gpu_index_and_refuses_others() -> None:
    assert engine_host._gpu_index("3") == 3
    for bad in ("0,1", "x", "", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="GPU index"):
            engine_host._gpu_index(bad)


def test_priming_without_cuda_does_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert standby.prime_gpu(0) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("mode", "cuda", "budget", "grows"),
    [("primed", True, None, True), ("cold", True, None, False), ("primed", False, None, False),
     ("primed", True, "2GiB", False)],
)  # fmt: skip
def test_an_automatic_budget_leaves_room_for_a_primed_standby(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, cuda: bool, budget: str | None, grows: bool
) -> None:
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    params = {"model": "tiny-bert", "plan_repository": str(tmp_path), **({"budget": budget} if budget else {})}
    settings = ServeSettings.from_parameters(params)
    adjusted = engine_host.with_room_for_standby(settings, mode, cuda)
    assert adjusted.reserve - settings.reserve == (standby.PRIMED_CONTEXT_BYTES if grows else 0)
    assert adjusted.budget == settings.budget and adjusted.model == settings.model
