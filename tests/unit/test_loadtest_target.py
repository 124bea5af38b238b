"""Request layout from Triton metadata (any family), request data, cold_start parsing, model lists."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from loadtest.triton_target import (
    InputSpec,
    TargetError,
    TritonTarget,
    input_array,
    model_io,
    parse_cold_start,
)

TEXT_METADATA = {  # gRPC as_json form: dims are strings
    "name": "bert-base-3",
    "inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": ["-1", "-1"]},
        {"name": "attention_mask", "datatype": "INT64", "shape": ["-1", "-1"]},
    ],
    "outputs": [
        {"name": "output", "datatype": "FP32", "shape": ["-1", "768"]},
        {"name": "cold_start", "datatype": "FP32", "shape": ["-1", "2"]},
    ],
}
RESNET_METADATA = {  # HTTP form: dims are ints
    "name": "resnet50-0",
    "inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 1000]}],
}


def test_text_model_io():
    io = model_io("bert-base-3", TEXT_METADATA, max_batch_size=8, seq_len=384)
    assert io.inputs == (
        InputSpec("input_ids", "INT64", (1, 384)),
        InputSpec("attention_mask", "INT64", (1, 384)),
    )
    assert io.outputs == ("output", "cold_start") and io.reports_cold_start


def test_resnet_model_io_without_cold_start_output():
    io = model_io("resnet50-0", RESNET_METADATA, max_batch_size=4, seq_len=384)
    assert io.inputs == (InputSpec("pixel_values", "FP32", (1, 3, 224, 224)),)
    assert io.outputs == ("output",) and not io.reports_cold_start


def test_non_batching_model_takes_the_first_dim_of_a_matrix_as_batch():
    metadata = {
        "inputs": [
            {"name": "x", "datatype": "INT32", "shape": [-1, 4]},
            {"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "tokens", "datatype": "INT64", "shape": [-1]},
        ]
    }
    io = model_io("m", metadata, 0, 16)
    assert [i.shape for i in io.inputs] == [(1, 4), (1, 16), (16,)]
    assert io.outputs == ()  # no "output": ask for every output


def test_unsupported_inputs_are_named():
    with pytest.raises(TargetError, match="'m'.*'text'.*BYTES"):
        model_io("m", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}]}, 8, 16)
    with pytest.raises(TargetError, match="no inputs"):
        model_io("m", {"inputs": []}, 8, 16)


def test_input_values():
    rng = np.random.default_rng(0)
    ids = input_array(InputSpec("input_ids", "INT64", (1, 32)), rng)
    assert ids.dtype == np.int64 and ids.shape == (1, 32) and ids.min() >= 100 and ids.max() < 1000
    mask = input_array(InputSpec("attention_mask", "INT64", (1, 32)), rng)
    assert np.all(mask == 1)
    pixels = input_array(InputSpec("pixel_values", "FP32", (1, 3, 8, 8)), rng)
    assert pixels.dtype == np.float32 and pixels.std() > 0.5


def test_parse_cold_start():
    assert parse_cold_start(np.array([[1.0, 12.5]], dtype=np.float32)) == (True, 12.5)
    assert parse_cold_start(np.array([[0.0, 0.0]], dtype=np.float32)) == (False, 0.0)
    assert parse_cold_start(np.array([1.0])) == (True, None)
    assert parse_cold_start(None) == (None, None)


def test_target_validates_and_defaults_urls():
    with pytest.raises(TargetError, match="protocol"):
        TritonTarget("tcp")
    assert TritonTarget("grpc").url == "localhost:8001"
    assert TritonTarget("http", "http://127.0.0.1:9000").url == "127.0.0.1:9000"


def test_unreachable_server_is_a_clear_error():
    target = TritonTarget("http", "127.0.0.1:9", timeout_s=2.0)
    with pytest.raises(TargetError, match="not reachable"):
        target.discover(["m"])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_missing_client_dependency_is_a_target_error(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client without its optional dependencies fails the load test clearly instead of hanging it."""
    monkeypatch.setitem(sys.modules, f"tritonclient.{protocol}", None)  # import now raises ImportError
    with pytest.raises(TargetError, match=f"tritonclient.{protocol} cannot be imported"):
        TritonTarget(protocol, "127.0.0.1:1", seq_len=8, timeout_s=1.0)
