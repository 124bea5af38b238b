"""Model sources (`runtime/zoo.py`): seeded zoo weights, output contract per family, dtypes, checkpoint folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deepplan_backend.runtime import zoo
from deepplan_backend.runtime.zoo import (
    PAPER_MODELS,
    TINY_MODELS,
    ZOO,
    ModelSourceError,
    load_model,
    parse_dtype,
)

# family -> (zoo name, expected output width)
TINY_OUTPUT_WIDTH = {"tiny-bert": 64, "tiny-roberta": 64, "tiny-gpt2": 1000, "tiny-resnet": 10}

# Parameter counts of the zoo's paper models (Hugging Face reference counts; RoBERTa here keeps the default
# type_vocab_size=2 of RobertaConfig, one token-type row more than the published checkpoints).
PAPER_PARAMS = {
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "bert-base": 109_482_240,
    "bert-large": 335_141_888,
    "roberta-base": 124_646_400,
    "roberta-large": 355_360_768,
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _state(model: zoo.ZooModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def test_zoo_lists_paper_and_tiny_models() -> None:
    assert set(PAPER_MODELS) | set(TINY_MODELS) == set(ZOO)
    assert {ZOO[n].family for n in TINY_MODELS} == {"resnet", "bert", "roberta", "gpt2"}


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2"])
def test_same_name_and_seed_give_bit_identical_weights(name: str) -> None:
    a, b = _state(load_model(name, seed=3)), _state(load_model(name, seed=3))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_different_seed_gives_different_weights() -> None:
    a, b = _state(load_model("tiny-bert", seed=0)), _state(load_model("tiny-bert", seed=1))
    differing = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert differing, "seed did not change any weight"
    assert "inner.embeddings.word_embeddings.weight" in differing


@pytest.mark.parametrize("name", TINY_MODELS)
def test_output_contract_per_family(name: str) -> None:
    model = load_model(name)
    inputs = model.example_inputs(batch_size=2, seed=1)
    if model.family == "resnet":
        assert model.input_names == ("pixel_values",)
        assert inputs["pixel_values"].shape == (2, 3, zoo.IMAGE_SIZE, zoo.IMAGE_SIZE)
    else:
        assert model.input_names == ("input_ids", "attention_mask")
        ids = inputs["input_ids"]
        assert ids.dtype == torch.int64 and ids.shape == (2, model.default_seq_len)
        assert int(ids.min()) >= 0 and int(ids.max()) < model.vocab_size
        assert torch.equal(inputs["attention_mask"], torch.ones_like(ids))
    with torch.inference_mode():
        out = model.module(**inputs)
    assert out.shape == (2, TINY_OUTPUT_WIDTH[name])
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not model.module.training
    assert not any(p.requires_grad for p in model.module.parameters())


def test_gpt2_output_is_last_position_logits() -> None:
    model = load_model("tiny-gpt2")
    inputs = model.example_inputs(2, 8)
    with torch.inference_mode():
        full = model.module.inner(**inputs, return_dict=True).logits
        out = model.module(**inputs)
    assert torch.equal(out, full[:, -1, :])


def test_bert_output_is_pooled_output() -> None:
    model = load_model("tiny-bert")
    inputs = model.example_inputs(2, 8)
    with torch.inference_mode():
        pooled = model.module.inner(**inputs, return_dict=True).pooler_output
        out = model.module(**inputs)
    assert torch.equal(out, pooled)


def test_example_inputs_are_seeded() -> None:
    model = load_model("tiny-bert")
    assert torch.equal(model.example_inputs(2, seed=5)["input_ids"], model.example_inputs(2, seed=5)["input_ids"])
    assert not torch.equal(model.example_inputs(2, seed=5)["input_ids"], model.example_inputs(2, seed=6)["input_ids"])


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("fp32", "float32"),
        ("float32", "float32"),
        ("fp16", "float16"),
        ("half", "float16"),
        ("float16", "float16"),
        ("bf16", "bfloat16"),
        ("bfloat16", "bfloat16"),
    ],
)
def test_parse_dtype_aliases(alias: str, canonical: str) -> None:
    assert parse_dtype(alias) == canonical


@pytest.mark.parametrize("bad", ["int8", "fp8", "", "float64"])
def test_parse_dtype_refuses_unknown_names_listing_choices(bad: str) -> None:
    with pytest.raises(ModelSourceError) as info:
        parse_dtype(bad)
    message = str(info.value)
    assert repr(bad) in message
    for choice in ("float32", "float16", "bfloat16"):
        assert choice in message


def test_load_model_refuses_bad_dtype() -> None:
    with pytest.raises(ModelSourceError, match="unknown dtype"):
        load_model("tiny-bert", dtype="int4")


def test_unknown_model_name_is_refused_with_the_zoo_listed(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError) as info:
        load_model(str(tmp_path / "no-such-model"))
    message = str(info.value)
    assert "no-such-model" in message
    assert "tiny-bert" in message and "resnet50" in message
    assert isinstance(info.value, ValueError)  # CLIs catch ValueError for clean exits


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
@pytest.mark.parametrize("name", ["tiny-bert", "tiny-resnet"])
def test_half_precision_load(name: str, dtype: str, torch_dtype: torch.dtype) -> None:
    model = load_model(name, dtype=dtype)
    reference = load_model(name)
    assert model.dtype == parse_dtype(dtype)
    assert {p.dtype for p in model.module.parameters()} == {torch_dtype}
    # Same seeded weights, rounded.
    for (k, p), (_, q) in zip(model.module.named_parameters(), reference.module.named_parameters(), strict=True):
        assert torch.equal(p, q.to(torch_dtype)), k
    inputs = model.example_inputs(1)
    if name == "tiny-resnet":
        assert inputs["pixel_values"].dtype == torch_dtype
    with torch.inference_mode():
        out = model.module(**inputs).float()
        ref = reference.module(**{k: v.float() if v.is_floating_point() else v for k, v in inputs.items()})
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_checkpoint_folder_loads_and_matches_saved_model(name: str, tmp_path: Path) -> None:
    saved = load_model(name, seed=7)
    folder = tmp_path / f"my-{name}"
    saved.module.inner.save_pretrained(folder)
    loaded = load_model(str(folder))
    assert loaded.family == saved.family
    assert loaded.name == folder.name
    assert loaded.source == f"checkpoint:{folder.resolve()}"
    assert loaded.dtype == "float32"
    assert not loaded.module.training
    inputs = saved.example_inputs(2, 8 if saved.family != "resnet" else None, seed=2)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(**inputs), saved.module(**inputs), rtol=0, atol=0)
    if saved.family == "gpt2":  # ties survive the round trip
        inner = loaded.module.inner
        assert inner.lm_head.weight is inner.transformer.wte.weight


def test_checkpoint_folder_in_half_precision(tmp_path: Path) -> None:
    load_model("tiny-bert").module.inner.save_pretrained(tmp_path / "ckpt")
    loaded = load_model(str(tmp_path / "ckpt"), dtype="bf16")
    assert {p.dtype for p in loaded.module.parameters()} == {torch.bfloat16}


def test_checkpoint_with_unsupported_model_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(ModelSourceError) as info:
        load_model(str(tmp_path))
    message = str(info.value)
    assert "'t5'" in message and "not supported" in message
    for family in ("bert", "roberta", "gpt2", "resnet"):
        assert family in message


def test_checkpoint_without_model_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelSourceError, match="not supported"):
        load_model(str(tmp_path))


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="no config.json"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-roberta", "tiny-gpt2"])
def test_sequence_length_limit(name: str) -> None:
    model = load_model(name)
    assert model.max_seq_len == 128  # RoBERTa: 130 positions minus the two padding slots
    inputs = model.example_inputs(1, model.max_seq_len)  # the longest allowed length runs
    with torch.inference_mode():
        assert torch.isfinite(model.module(**inputs)).all()
    with pytest.raises(ModelSourceError, match=r"sequence length 129 exceeds the model's maximum 128"):
        model.example_inputs(1, model.max_seq_len + 1)


def test_default_sequence_lengths() -> None:
    assert load_model("tiny-bert").default_seq_len == ZOO["tiny-bert"].default_seq_len == 16
    assert ZOO["bert-base"].default_seq_len == 384
    assert ZOO["gpt2"].default_seq_len == 1024


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_model_parameter_counts(name: str) -> None:
    """The zoo configs give the paper models' sizes (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        module = zoo._build_from_config(ZOO[name])
    assert sum(p.numel() for p in module.parameters()) == PAPER_PARAMS[name]


def test_resnet50_builds_with_expected_size_and_output() -> None:
    """The one full-size build (about a second): parameters and the [B, 1000] logits contract."""
    model = load_model("resnet50")
    assert sum(p.numel() for p in model.module.parameters()) == PAPER_PARAMS["resnet50"]
    with torch.inference_mode():
        out = model.module(**model.example_inputs(1))
    assert out.shape == (1, 1000)


def test_seeded_builds_on_threads_at_once_give_the_seeded_weights() -> None:
    """The generator is process-wide: an engine host builds models on many threads, and a standby preloads
    skeletons on one. A build that restored the generator mid-way through another's changed its weights."""
    import threading

    want = {k: v.clone() for k, v in load_model("tiny-bert").module.state_dict().items()}
    stop = threading.Event()

    def others() -> None:
        while not stop.is_set():
            load_model("tiny-gpt2", seed=1)
            load_model("tiny-roberta", skeleton=True)

    noise = [threading.Thread(target=others) for _ in range(2)]
    for t in noise:
        t.start()
    try:
        for _ in range(15):
            got = load_model("tiny-bert").module.state_dict()
            assert all(torch.equal(got[k], v) for k, v in want.items()), "a concurrent build changed the weights"
    finally:
        stop.set()
        for t in noise:
            t.join()
