"""benchmark.triton_scale on the CPU: real tritonserver, N tiny models through one engine host, light front ends."""

from __future__ import annotations

import csv
from pathlib import Path

from benchmark.triton_scale import main, parse_points, per_model_overhead


def test_scale_points_answer_right_with_one_host_and_light_front_ends(tmp_path: Path) -> None:
    out = tmp_path / "scale"
    code = main(["--model", "tiny-bert", "--seq-len", "16", "--points", "shared:1", "shared:3", "--budget", "1MiB",
                 "--out", str(out)])  # fmt: skip
    rows = list(csv.DictReader((out / "scale.csv").open()))
    assert code == 0, rows
    assert [int(r["instances"]) for r in rows] == [1, 3]
    for r in rows:
        assert r["error"] == "" and int(r["wrong"]) == 0 and int(r["answers"]) == int(r["instances"])
        assert int(r["engine_hosts"]) == 1 and int(r["stubs"]) == int(r["instances"])
        assert float(r["stub_rss_mib_median"]) < 150, "a front end stays small: no PyTorch in it"
    assert (out / "shared-n3.log").read_text().count("in engine host pid") == 3


def test_points_and_overhead_arithmetic() -> None:
    assert parse_points(["shared:8", "instance:2"]) == [("shared", 8), ("instance", 2)]
    rows = [
        {"process": "instance", "instances": 4, "gpu_used_loaded_mib": 6000, "error": ""},
        {"process": "instance", "instances": 8, "gpu_used_loaded_mib": 10000, "error": ""},
        {"process": "shared", "instances": 8, "gpu_used_loaded_mib": 5000, "error": ""},
    ]
    assert per_model_overhead(rows) == {"instance": 1000.0}
