"""`python3 -m benchmark.host_weights` end to end on the CPU: three fresh processes per model, a row per model."""

from __future__ import annotations

import json

from benchmark.host_weights import main
from deepplan_backend.runtime.residency import state_base


def test_one_model_three_ways_one_row_and_no_image_left(tmp_path, capsys) -> None:
    scratch_before = set(state_base().glob("deepplan-bench-images-*"))
    out = tmp_path / "host_weights.csv"
    assert main(["--models", "tiny-bert", "--repeat", "1", "-o", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert row["model"] == "tiny-bert" and row["device"] == "cpu" and row["bytes"] > 0
    assert min(row["private_ms"], row["image_build_ms"], row["image_map_ms"]) > 0
    assert row["speedup"] == row["private_ms"] / row["image_map_ms"]
    # Each process said how it got its weights (the benchmark refuses a run where one did not do what it measures).
    assert set(json.loads(row["private_laps_ms"])) == {"build", "table", "pack"}
    assert set(json.loads(row["image_map_laps_ms"])) == {"map", "skeleton", "bind", "pin"}
    assert "faster (cpu)" in capsys.readouterr().out
    assert set(state_base().glob("deepplan-bench-images-*")) == scratch_before
