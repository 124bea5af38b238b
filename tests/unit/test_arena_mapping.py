"""`benchmark.arena_mapping` on the CPU host (its figures need a GPU: tests/gpu/test_arena_mapping_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from benchmark import arena_mapping


def test_the_mapping_benchmark_refuses_a_machine_without_cuda(capsys) -> None:
    """What it measures exists only on a GPU: without one it says so instead of printing empty figures."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: tests/gpu/test_arena_mapping_gpu.py runs the benchmark")
    with pytest.raises(SystemExit) as exit_info:
        arena_mapping.main(["-n", "1"])
    assert exit_info.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
