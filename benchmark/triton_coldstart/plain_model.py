"""Triton's own load (step 7): a plain ``backend: "python"`` model that loads the same weights from a checkpoint.

Its time from the load call until it answers is what Triton takes to make a model ready without deepplan.
"""

from __future__ import annotations

from pathlib import Path

from deepplan_backend.repository import OUTPUT_DIMS, inputs_pbtxt
from deepplan_backend.runtime import zoo

PLAIN_MODEL_PY = '''"""Plain Triton Python model: the same weights from a checkpoint folder, moved to the device."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import torch
        import transformers

        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.family = params["family"]
        self.device = torch.device(params["device"])
        loader = {
            "resnet": transformers.AutoModelForImageClassification,
            "gpt2": transformers.AutoModelForCausalLM,
        }.get(self.family, transformers.AutoModel)
        self.model = loader.from_pretrained(params["checkpoint"]).eval().to(self.device)

    def execute(self, requests):
        import torch
        from torch.utils.dlpack import from_dlpack, to_dlpack

        responses = []
        for request in requests:
            # DLPack both ways, as the deepplan backend does: the stub's NumPy bridge breaks under NumPy 2.
            inputs = {t.name(): from_dlpack(t.to_dlpack()).to(self.device) for t in request.inputs()}
            with torch.inference_mode():
                out = self.model(**inputs, return_dict=True)
            if self.family == "resnet":
                y = out.logits
            elif self.family == "gpt2":
                y = out.logits[:, -1, :]
            else:
                y = out.pooler_output
            tensor = pb_utils.Tensor.from_dlpack("output", to_dlpack(y.float().cpu().contiguous()))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
'''


def plain_config(name: str, model: str, checkpoint: Path, device: str) -> str:
    """``config.pbtxt`` of the plain Python model (same inputs and ``output`` as the deepplan model)."""
    inputs = inputs_pbtxt(model)
    params = {"checkpoint": str(checkpoint), "family": zoo.ZOO[model].family, "device": device}
    param_text = ",\n".join(f'  {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in params.items())
    return f"""name: "{name}"
backend: "python"
max_batch_size: 8
input [
{inputs}
]
output [
  {{ name: "output", data_type: TYPE_FP32, dims: [ {OUTPUT_DIMS[model]} ] }}
]
instance_group [
  {{ count: 1, kind: KIND_CPU }}
]
parameters [
{param_text}
]
"""
