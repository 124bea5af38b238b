"""Weights images on the GPU: the mapped file, page-locked by registration, feeds copies and DHA like pinned memory.

Skipped without CUDA. On the CPU host, `tests/unit/test_weights_image.py` covers building, mapping, sharing
between processes and the files' lifecycle; what only a GPU shows is that registered mapped memory serves every
engine path (async copies on the copy engines, DHA reads in place) and that the pages stay put across evictions.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from deepplan_backend.runtime.engine import ColdStartEngine
from deepplan_backend.runtime.prepared import prepare_imaged
from tests.gpu.engine_checks import cold_then_warm, reference_output, schedules_by_mode

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture
def folder():
    with tempfile.TemporaryDirectory(prefix="deepplan-gpu-images-", dir="/dev/shm") as d:
        yield Path(d)


@pytest.mark.parametrize("name", ["tiny-bert", "bert-base", "resnet50"])
def test_engine_from_a_mapped_image_matches_plain_model(folder: Path, name: str) -> None:
    built = prepare_imaged(folder, name)  # packed into a new image, registered before packing
    mapped = prepare_imaged(folder, name)  # a second mapping of the same pages, registered again
    assert built.image is not None and mapped.image is not None
    assert built.image.pinned and mapped.image.pinned and mapped.store.pinned
    inputs = mapped.model.example_inputs(1)
    expected = reference_output(name, "float32", inputs)
    devices = [torch.device("cuda", i) for i in range(min(4, torch.cuda.device_count()))]
    for label, prepared in (("built", built), ("mapped", mapped)):
        engine = ColdStartEngine(prepared.model, prepared.store, devices)
        for mode, (schedule, overlap) in schedules_by_mode(len(prepared.table), prepared.table.nbytes).items():
            for cycle in range(2):
                cold_then_warm(engine, inputs, schedule, overlap, expected, f"{label} {mode} #{cycle}")
                engine.evict()
        engine.close()
    report = {
        "model": name,
        "built_ms": built.prepare_ms,
        "mapped_ms": mapped.prepare_ms,
        "torch_is_pinned": bool(mapped.store.buffer.is_pinned()),
        "bytes": mapped.table.total_bytes,
    }
    print(f"weights image {json.dumps(report)}")
    if os.environ.get("DEEPPLAN_GPU_REPORT_DIR"):  # scripts/device_suite.sh keeps it with the call's logs
        with open(Path(os.environ["DEEPPLAN_GPU_REPORT_DIR"]) / "weights_image_gpu.jsonl", "a") as f:
            f.write(json.dumps(report) + "\n")
    built.image.release()
    mapped.image.release()
    assert not list(folder.glob("*.img"))
