"""Model repositories for the deepplan backend: one config per zoo model, and N instances of one model.

    python3 -m deepplan_backend.repository make-instances --model bert-base --count 200 --out repo200
    python3 -m deepplan_backend.repository make-repository --models tiny-bert tiny-gpt2 --out model_repository

Every generated model is its own Triton model (own endpoint, statistics, load/unload) with ``backend: "deepplan"``.
Instances of the same (model, dtype, seed) that live in ONE process share one pinned host copy of the weights
(`prepared.prepare_shared`). With ``process: shared`` (the default) that process is the engine host of the
model's target GPU, so N instances spread over G GPUs cost G host copies; with ``process: instance`` each
stub packs its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# Output width per zoo model (pooled hidden size, vocabulary, or labels), so configs declare exact shapes.
OUTPUT_DIMS = {
    "resnet50": 1000,
    "resnet101": 1000,
    "bert-base": 768,
    "bert-large": 1024,
    "roberta-base": 768,
    "roberta-large": 1024,
    "gpt2": 50257,
    "gpt2-medium": 50257,
    "tiny-resnet": 10,
    "tiny-bert": 64,
    "tiny-roberta": 64,
    "tiny-gpt2": 1000,
}
TINY_DEFAULT = ("tiny-bert", "tiny-gpt2", "tiny-resnet")


def family_of(model: str) -> str:
    """``resnet`` for image models, else ``text``."""
    return "resnet" if "resnet" in model else "text"


def inputs_pbtxt(model: str) -> str:
    """The ``input [...]`` entries of a model serving `model`: what `zoo.ZooModel.input_names` takes."""
    if family_of(model) == "resnet":
        return '  { name: "pixel_values", data_type: TYPE_FP32, dims: [ 3, 224, 224 ] }'
    return (
        '  { name: "input_ids", data_type: TYPE_INT64, dims: [ -1 ] },\n'
        '  { name: "attention_mask", data_type: TYPE_INT64, dims: [ -1 ], optional: true }'
    )


def config_pbtxt(
    name: str,
    model: str,
    *,
    output_dim: int | None = None,
    max_batch_size: int = 8,
    parameters: dict[str, str] | None = None,
    kind: str = "KIND_CPU",
    gpus: Sequence[int] = (),
    queue_delay_us: int = 1000,
) -> str:
    """The ``config.pbtxt`` of one deepplan model serving zoo model (or checkpoint folder) `model`."""
    dim = output_dim if output_dim is not None else OUTPUT_DIMS.get(model, -1)
    inputs = inputs_pbtxt(model)
    params = {"model": model, **(parameters or {})}
    param_text = ",\n".join(f'  {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in params.items())
    group = f"  {{ count: 1, kind: {kind}"
    if gpus:
        group += f", gpus: [ {', '.join(str(g) for g in gpus)} ]"
    group += " }"
    return f"""name: "{name}"
backend: "deepplan"
max_batch_size: {max_batch_size}
dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}
input [
{inputs}
]
output [
  {{ name: "output", data_type: TYPE_FP32, dims: [ {dim} ] }},
  {{ name: "cold_start", data_type: TYPE_FP32, dims: [ 2 ] }}
]
instance_group [
{group}
]
parameters [
{param_text}
]
"""


def write_model(repo: Path, name: str, text: str, model_py: str | None = None) -> Path:
    """``<repo>/<name>/config.pbtxt`` plus the version folder ``1/`` Triton requires.

    The folder stays empty for a deepplan model (the backend's own ``model.py`` serves it); `model_py` is the code
    of a plain ``backend: "python"`` model, written as ``1/model.py``.
    """
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / ".gitkeep").touch()
    (folder / "config.pbtxt").write_text(text)
    if model_py is not None:
        (folder / "1" / "model.py").write_text(model_py)
    return folder


def make_instances(
    model: str,
    count: int,
    out: Path,
    *,
    prefix: str | None = None,
    gpus: int = 0,
    parameters: dict[str, str] | None = None,
    max_batch_size: int = 8,
) -> list[Path]:
    """`count` Triton models serving `model`, named ``<prefix>-<i>``; with `gpus` > 0, spread round-robin.

    All share (model, dtype, seed), hence one host copy per process and one plan in the plan repository.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    prefix = prefix or model
    width = len(str(count - 1))
    folders = []
    for i in range(count):
        params = dict(parameters or {})
        if gpus > 0:
            params.setdefault("devices", "auto")
            # KIND_CPU with the GPU as a parameter, not KIND_GPU: the front end then never touches CUDA (the
            # engine host of that GPU does the device work), so 200 models cost no 200 CUDA contexts.
            params.setdefault("target_gpu", str(i % gpus))
        name = f"{prefix}-{i:0{width}d}"
        text = config_pbtxt(name, model, max_batch_size=max_batch_size, parameters=params)
        folders.append(write_model(out, name, text))
    return folders


def _params(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--param {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python3 -m deepplan_backend.repository", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    inst = sub.add_parser("make-instances", help="N Triton models serving one zoo model")
    inst.add_argument("--model", required=True)
    inst.add_argument("--count", type=int, required=True)
    inst.add_argument("--out", type=Path, required=True)
    inst.add_argument("--prefix")
    inst.add_argument(
        "--gpus", type=int, default=0, help="spread instances round-robin over this many GPUs (parameter target_gpu)"
    )
    inst.add_argument("--max-batch-size", type=int, default=8)
    inst.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="deepplan parameter")
    rep = sub.add_parser("make-repository", help="one model per zoo name")
    rep.add_argument("--models", nargs="+", default=list(TINY_DEFAULT))
    rep.add_argument("--out", type=Path, required=True)
    rep.add_argument("--max-batch-size", type=int, default=8)
    rep.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="deepplan parameter")
    args = parser.parse_args(argv)
    params = _params(args.param)
    if args.cmd == "make-instances":
        folders = make_instances(
            args.model,
            args.count,
            args.out,
            prefix=args.prefix,
            gpus=args.gpus,
            parameters=params,
            max_batch_size=args.max_batch_size,
        )
    else:
        folders = [
            write_model(args.out, m, config_pbtxt(m, m, max_batch_size=args.max_batch_size, parameters=params))
            for m in args.models
        ]
    print(f"wrote {len(folders)} model(s) under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
