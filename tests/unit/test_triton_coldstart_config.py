"""The Triton cold-start benchmark writes the deepplan parameters its options ask for."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.triton_coldstart.cli import parse_args
from benchmark.triton_coldstart.repository import Layout, deepplan_config


@pytest.mark.parametrize(("option", "expected"), [([], "shared"), (["--process", "instance"], "instance")])
def test_process_option_reaches_the_model_config(tmp_path: Path, option: list[str], expected: str) -> None:
    args = parse_args(["--quick", "--models", "tiny-bert", *option])
    layout = Layout(tmp_path, tmp_path / "tmp", 1 << 30, gpu=False, state=tmp_path / "state")
    text = deepplan_config("m", "tiny-bert", args, layout)
    assert 'key: "process"' in text
    assert f'string_value: "{tmp_path / "state" / "residency"}"' in text  # the state folder, not the work folder
    process = text.split('key: "process"', 1)[1].split("string_value:", 1)[1].split('"')[1]
    assert process == expected


def test_unknown_process_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--process", "threads"])
