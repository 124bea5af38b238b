"""`benchmark.arena_mapping` on a GPU: a row per size, chunking and mode, timing the driver calls each mode makes."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark import arena_mapping

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_rows_time_the_calls_each_mode_makes(tmp_path) -> None:
    out = tmp_path / "arena_mapping.csv"
    assert arena_mapping.main(["--sizes-mib", "6", "--chunks-mib", "0", "2", "-n", "2", "-o", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["mode"], r["chunks"]) for r in rows] == [("fresh", 1), ("pooled", 1), ("fresh", 3), ("pooled", 3)]
    for r in rows:
        assert r["map_ms"] > 0 and r["access_ms"] > 0 and r["unmap_ms"] > 0 and r["copy_ms"] > 0
        fresh = r["mode"] == "fresh"
        assert (r["create_ms"] > 0) == fresh and (r["release_ms"] > 0) == fresh  # pooled keeps the allocation
        assert r["provision_ms"] == pytest.approx(r["create_ms"] + r["map_ms"] + r["access_ms"])
