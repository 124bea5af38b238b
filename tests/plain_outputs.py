"""What the plain zoo model answers for given inputs: the reference the backend's outputs are compared with.

Usage in a test::

    from tests.plain_outputs import plain_output

    np.testing.assert_allclose(served_output, plain_output("tiny-bert", input_ids=x), rtol=1e-4, atol=1e-5)
"""

from __future__ import annotations

import numpy as np
import torch

from deepplan_backend.runtime.zoo import load_model

_modules: dict[str, torch.nn.Module] = {}


def plain_output(model: str, **inputs: np.ndarray) -> np.ndarray:
    """The zoo model's FP32 output for `inputs` (NumPy arrays by input name), built once per test process."""
    if model not in _modules:
        _modules[model] = load_model(model).module
    with torch.inference_mode():
        return _modules[model](**{k: torch.from_numpy(v) for k, v in inputs.items()}).float().numpy()
