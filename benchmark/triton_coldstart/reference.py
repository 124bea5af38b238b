"""The answers every response is checked against: each zoo model run in this process, and its checkpoint folder."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepplan_backend.runtime import zoo

from .repository import Layout


@dataclass
class Reference:
    """A zoo model's request inputs and the plain model's output for them (computed in this process)."""

    inputs: dict[str, np.ndarray]
    output: np.ndarray
    checkpoint: Path


def make_reference(model: str, args: argparse.Namespace, lay: Layout) -> Reference:
    """Build the zoo model (same seed as the server), save a checkpoint folder, run it on the server's device."""
    zm = zoo.load_model(model)
    checkpoint = lay.checkpoints / model
    inner: Any = zm.module.inner  # a transformers PreTrainedModel
    inner.save_pretrained(str(checkpoint))
    device = torch.device("cuda:0" if lay.gpu else "cpu")
    seq = min(args.seq_len, zm.max_seq_len) if args.seq_len else None
    tensors = zm.example_inputs(1, seq, seed=1)
    module = zm.module.to(device)
    with torch.inference_mode():
        output = module(**{k: v.to(device) for k, v in tensors.items()}).float().cpu().numpy()
    module.to("cpu")
    del module, zm
    if lay.gpu:
        torch.cuda.empty_cache()
    return Reference({k: v.numpy() for k, v in tensors.items()}, output, checkpoint)
