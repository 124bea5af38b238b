"""benchmark.triton_scale on the CPU: real tritonserver, N tiny models through one engine host, light front ends."""

from __future__ import annotations

import csv
import json
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
        assert int(r["standby_hosts"]) == 1, "the host keeps one standby"
        assert float(r["stub_rss_mib_median"]) < 150, "a front end stays small: no PyTorch in it"
        # The PSS sum counts each shared page once: below the RSS sum of the same processes, never above.
        rss = sum(float(r[k]) for k in ("server_rss_mib", "stubs_rss_mib", "hosts_rss_mib", "standbys_rss_mib"))
        assert 0 < float(r["pss_total_mib"]) < rss
    assert (out / "shared-n3.log").read_text().count("in engine host pid") == 3


def test_points_and_overhead_arithmetic() -> None:
    assert parse_points(["shared:8", "instance:2"]) == [("shared", 8), ("instance", 2)]
    rows = [
        {"process": "instance", "instances": 4, "gpu_used_loaded_mib": 6000, "error": ""},
        {"process": "instance", "instances": 8, "gpu_used_loaded_mib": 10000, "error": ""},
        {"process": "shared", "instances": 8, "gpu_used_loaded_mib": 5000, "error": ""},
    ]
    assert per_model_overhead(rows) == {"instance": 1000.0}


def test_plot_of_a_finished_run(tmp_path: Path) -> None:
    rows = [
        {"process": "instance", "instances": 4, "gpus": 2, "model": "bert-base", "gpu_used_loaded_mib": 6068,
         "gpu_used_served_mib": 8244},
        {"process": "instance", "instances": 8, "gpus": 2, "model": "bert-base", "gpu_used_loaded_mib": 10956,
         "gpu_used_served_mib": None},
        {"process": "shared", "instances": 200, "gpus": 2, "model": "bert-base", "gpu_used_loaded_mib": 3624},
    ]  # fmt: skip
    table = tmp_path / "scale.json"
    table.write_text(json.dumps({"rows": rows}))
    assert main(["--plot", str(table)]) == 0
    assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG"
    cpu = tmp_path / "cpu.json"
    cpu.write_text(json.dumps({"rows": [{"process": "shared", "instances": 1, "gpu_used_loaded_mib": None}]}))
    assert main(["--plot", str(cpu)]) == 0 and not (tmp_path / "cpu.png").exists()
