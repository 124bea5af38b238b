"""The profiler charges a shared tensor's DHA penalty to its owner (GPT-2's tied embedding / LM head)."""

from deepplan_backend.runtime.prepared import prepare
from planner.profiler import fold_shared_penalties


def test_lm_head_penalty_moves_to_the_embedding_owner() -> None:
    table = prepare("tiny-gpt2").table
    head = next(layer for layer in table if layer.shared)
    owner = head.shared[0].owner_layer
    n = len(table)
    exec_ms = [1.0] * n
    dha_ms = [1.0] * n
    dha_ms[head.index] = 91.0  # the LM head's GEMM reading the vocabulary table over PCIe
    dha_ms[owner] = 1.5  # the embedding lookup alone is cheap under DHA
    folded = fold_shared_penalties(table, exec_ms, dha_ms)
    assert folded[owner] == 1.5 + 90.0
    assert folded[head.index] == 1.0
    assert sum(folded) == sum(dha_ms)


def test_models_without_shared_tensors_are_unchanged() -> None:
    table = prepare("tiny-bert").table
    n = len(table)
    dha = [float(i) for i in range(n)]
    assert fold_shared_penalties(table, [0.0] * n, dha) == dha
