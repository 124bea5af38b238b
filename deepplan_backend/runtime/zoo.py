"""Model sources: the zoo (seeded random weights from `transformers` configs) or a local checkpoint folder.

The zoo holds the paper's eight models and tiny test variants of each family.

Every served model is wrapped so that it takes named tensors and returns ONE float tensor, the same for all
engines and for the plain `transformers` reference:
  - BERT / RoBERTa: pooled output [B, hidden];
  - GPT-2: logits of the last position [B, vocab];
  - ResNet: class logits [B, num_labels].
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

DTYPES: Mapping[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""Accepted dtype names (also `fp32`, `fp16`, `bf16` through `parse_dtype`)."""

_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}

IMAGE_SIZE = 224
_SEEDED_BUILD = threading.Lock()


class ModelSourceError(ValueError):
    """An unknown model name, or a checkpoint folder that cannot be served."""


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: which family, its `transformers` config, and the default sequence length."""

    name: str
    family: str
    config: Mapping[str, object]
    default_seq_len: int


def _resnet(depths: list[int], hidden: list[int], embed: int = 64, labels: int = 1000) -> dict[str, object]:
    return {
        "depths": depths,
        "hidden_sizes": hidden,
        "embedding_size": embed,
        "layer_type": "bottleneck",
        "num_labels": labels,
    }


def _text(hidden: int, layers: int, heads: int, inter: int, vocab: int, positions: int) -> dict[str, object]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": inter,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
    }


def _gpt2(n_embd: int, n_layer: int, n_head: int, vocab: int = 50257, n_positions: int = 1024) -> dict[str, object]:
    # bos/eos must lie inside the vocabulary, or transformers warns for the tiny variant.
    return {
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": n_head,
        "vocab_size": vocab,
        "n_positions": n_positions,
        "bos_token_id": vocab - 1,
        "eos_token_id": vocab - 1,
    }


ZOO: Mapping[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("resnet50", "resnet", _resnet([3, 4, 6, 3], [256, 512, 1024, 2048]), 1),
        ModelSpec("resnet101", "resnet", _resnet([3, 4, 23, 3], [256, 512, 1024, 2048]), 1),
        ModelSpec("bert-base", "bert", _text(768, 12, 12, 3072, 30522, 512), 384),
        ModelSpec("bert-large", "bert", _text(1024, 24, 16, 4096, 30522, 512), 384),
        # RoBERTa reserves two position slots for padding, hence 514.
        ModelSpec("roberta-base", "roberta", _text(768, 12, 12, 3072, 50265, 514), 384),
        ModelSpec("roberta-large", "roberta", _text(1024, 24, 16, 4096, 50265, 514), 384),
        ModelSpec("gpt2", "gpt2", _gpt2(768, 12, 12), 1024),
        ModelSpec("gpt2-medium", "gpt2", _gpt2(1024, 24, 16), 1024),
        # Tiny variants: same code paths, milliseconds on a CPU.
        ModelSpec("tiny-resnet", "resnet", _resnet([1, 1], [32, 64], embed=16, labels=10), 1),
        ModelSpec("tiny-bert", "bert", _text(64, 2, 2, 128, 1000, 128), 16),
        ModelSpec("tiny-roberta", "roberta", _text(64, 2, 2, 128, 1000, 130), 16),
        ModelSpec("tiny-gpt2", "gpt2", _gpt2(64, 2, 2, vocab=1000, n_positions=128), 16),
    )
}

PAPER_MODELS = (
    "resnet50",
    "resnet101",
    "bert-base",
    "bert-large",
    "roberta-base",
    "roberta-large",
    "gpt2",
    "gpt2-medium",
)
TINY_MODELS = ("tiny-resnet", "tiny-bert", "tiny-roberta", "tiny-gpt2")

_FAMILY_OF_MODEL_TYPE = {"resnet": "resnet", "bert": "bert", "roberta": "roberta", "gpt2": "gpt2"}


def parse_dtype(name: str) -> str:
    """Canonical dtype name for `name` (`fp16` -> `float16`), or a ModelSourceError listing the choices."""
    canonical = _DTYPE_ALIASES.get(name, name)
    if canonical not in DTYPES:
        raise ModelSourceError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)} (or fp32/fp16/bf16)")
    return canonical


class ServedForward(nn.Module):
    """Wraps a `transformers` model so that every family returns one float tensor (see module docstring)."""

    def __init__(self, inner: nn.Module, family: str) -> None:
        super().__init__()
        self.inner = inner
        self.family = family

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Run the wrapped model and pick the family's output."""
        out = self.inner(**inputs, return_dict=True)
        if self.family == "resnet":
            return out.logits
        if self.family == "gpt2":
            return out.logits[:, -1, :]
        return out.pooler_output


@dataclass
class ZooModel:
    """A model ready to serve: the module (eval mode, on CPU, in its dtype) and what its inputs look like."""

    name: str
    family: str
    module: ServedForward
    dtype: str
    default_seq_len: int
    vocab_size: int
    max_seq_len: int
    source: str

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the tensors `forward` accepts (the first one is required)."""
        if self.family == "resnet":
            return ("pixel_values",)
        return ("input_ids", "attention_mask")

    def example_inputs(self, batch_size: int = 1, seq_len: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """Seeded random inputs of the right shape and type (token ids within the vocabulary)."""
        gen = torch.Generator().manual_seed(seed)
        if self.family == "resnet":
            pixels = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
            return {"pixel_values": pixels.to(DTYPES[self.dtype])}
        seq = self.default_seq_len if seq_len is None else seq_len
        if batch_size < 1 or seq < 1:
            raise ModelSourceError(f"{self.name}: batch size and sequence length must be >= 1, got {batch_size}, {seq}")
        if seq > self.max_seq_len:
            raise ModelSourceError(f"{self.name}: sequence length {seq} exceeds the model's maximum {self.max_seq_len}")
        ids = torch.randint(0, self.vocab_size, (batch_size, seq), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _build_from_config(spec: ModelSpec) -> nn.Module:
    import transformers

    builders: dict[str, tuple[Callable[..., object], Callable[..., nn.Module]]] = {
        "resnet": (transformers.ResNetConfig, transformers.ResNetForImageClassification),
        "bert": (transformers.BertConfig, transformers.BertModel),
        "roberta": (transformers.RobertaConfig, transformers.RobertaModel),
        "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel),
    }
    config_cls, model_cls = builders[spec.family]
    config = config_cls(**dict(spec.config))
    # Deterministic kernels are irrelevant here; deterministic *weights* are what make plans and tests reproducible.
    return model_cls(config)


def _build_from_checkpoint(path: Path, skeleton: bool = False) -> tuple[nn.Module, str]:
    import transformers

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelSourceError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    family = _FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        raise ModelSourceError(
            f"{path}: model_type {model_type!r} is not supported; supported: {', '.join(_FAMILY_OF_MODEL_TYPE)}"
        )
    model_cls: Any = {
        "resnet": transformers.ResNetForImageClassification,
        "bert": transformers.BertModel,
        "roberta": transformers.RobertaModel,
        "gpt2": transformers.GPT2LMHeadModel,
    }[family]
    # trust_remote_code stays off: a checkpoint folder is data, never code.
    if skeleton:
        config = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        with torch.device("meta"):
            return model_cls(config), family
    return model_cls.from_pretrained(str(path), trust_remote_code=False), family


def load_model(name_or_path: str, dtype: str = "float32", seed: int = 0, skeleton: bool = False) -> ZooModel:
    """Build a zoo model with seeded weights, or load a local checkpoint folder; eval mode, on CPU.

    The same name, dtype and seed give bit-identical weights on every run. With `skeleton`, the module is built on
    the meta device (no weights made or read, in milliseconds): its tensors must then all be bound to real ones,
    e.g. views of a mapped weights image.
    """
    dtype = parse_dtype(dtype)
    spec = ZOO.get(name_or_path)
    if spec is not None:
        if skeleton:  # no weights drawn: the generator is left alone
            with torch.device("meta"):
                inner = _build_from_config(spec)
        else:
            # The generator is process-wide: a build on another thread (an engine host registers many models, a
            # standby preloads) restoring its state mid-way would change these weights. One seeded build at a time.
            with _SEEDED_BUILD, torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                inner = _build_from_config(spec)
        family, default_seq, source = spec.family, spec.default_seq_len, f"zoo:{spec.name}"
        name = spec.name
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise _unknown_model(name_or_path)
        inner, family = _build_from_checkpoint(path, skeleton)
        default_seq = 1 if family == "resnet" else 128
        source, name = f"checkpoint:{path.resolve()}", path.name
    inner = inner.to(DTYPES[dtype]).eval()
    cfg = inner.config
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    max_seq = int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0) or 1)
    if family == "roberta":
        max_seq -= 2  # positions start after the padding index
    for p in inner.parameters():
        p.requires_grad_(False)
    return ZooModel(
        name=name,
        family=family,
        module=ServedForward(inner, family).eval(),
        dtype=dtype,
        default_seq_len=min(default_seq, max_seq),
        vocab_size=vocab,
        max_seq_len=max_seq,
        source=source,
    )


def source_identity(name_or_path: str) -> str:
    """What a model's weights are made from, as text that changes when they would: what a weights image is keyed by.

    A zoo entry: its name and config (the seeded weights follow from them). A checkpoint folder: its resolved path
    and every file's name, size and modification time (a re-saved checkpoint is a new source).
    """
    spec = ZOO.get(name_or_path)
    if spec is not None:
        return f"zoo:{spec.name}:{json.dumps(dict(spec.config), sort_keys=True)}"
    path = Path(name_or_path).resolve()
    if not path.is_dir():
        raise _unknown_model(name_or_path)
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
    return f"checkpoint:{path}:{json.dumps(files)}"


def _unknown_model(name_or_path: str) -> ModelSourceError:
    return ModelSourceError(f"unknown model {name_or_path!r}: not a zoo name ({', '.join(ZOO)}) nor an existing folder")
