"""Triton's floor (step 6): a ``backend: "python"`` model, configured as the deepplan one, that computes nothing.

Its client latency is what any Python-backend model pays for the same request: gRPC, Triton's scheduling and the
stub's IPC.
"""

from __future__ import annotations

import argparse

from .repository import Layout, deepplan_config

FLOOR_MODEL_PY = '''"""Triton's floor: reads the inputs as the deepplan front end does, answers zeros."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from deepplan_backend.dlpack import array_from_capsule, capsule_from_array


class TritonPythonModel:
    def initialize(self, args):
        outputs = json.loads(args["model_config"])["output"]
        self.dims = {o["name"]: [int(d) for d in o["dims"]] for o in outputs}

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = [array_from_capsule(t.to_dlpack()) for t in request.inputs()][0].shape[0]
            tensors = [
                pb_utils.Tensor.from_dlpack(name, capsule_from_array(np.zeros((rows, *dims), np.float32)))
                for name, dims in self.dims.items()
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


def floor_config(name: str, model: str, args: argparse.Namespace, lay: Layout) -> str:
    """The floor model's ``config.pbtxt``: the deepplan model's, run by the plain Python backend."""
    return deepplan_config(name, model, args, lay).replace('backend: "deepplan"', 'backend: "python"', 1)
