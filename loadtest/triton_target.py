"""The Triton side of a load test: discover each model's inputs, build requests, send them.

Inputs are discovered from Triton's model metadata and config, so any model family works: dynamic
dimensions become batch 1 (the first dimension of a batching model, or of any input of rank >= 2 in a
non-batching one, where it is the batch by convention) or ``seq_len`` (all others).
Input values: names containing ``mask`` are ones, integer inputs are token ids in ``[100, 1000)``
(valid in every text vocabulary of the zoo), float inputs are standard normal. Each model's request
tensors are built once and reused by every request to it.

Requests ask for the ``output`` and ``cold_start`` outputs when the model has them. ``cold_start`` is
FP32 [B, 2], row = ``[was_cold (0/1), provision_ms]``; row 0 describes the request (batch 1).

gRPC under gevent needs ``grpc.experimental.gevent.init_gevent()`` before the first channel: the Locust
files call it at import time; this module does not (it must stay importable without gevent).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PROTOCOLS = ("grpc", "http")
DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}
REQUESTED_OUTPUTS = ("output", "cold_start")
_NUMPY_TYPES = {
    "INT64": np.int64,
    "INT32": np.int32,
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "BOOL": np.bool_,
}


class TargetError(RuntimeError):
    """The Triton server or one of its models cannot be used for the load test."""


@dataclass(frozen=True)
class InputSpec:
    """One model input with every dimension resolved."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelIO:
    """What a request to one model carries and asks for.

    Attributes:
        model: Triton model name.
        inputs: the inputs to send, shapes resolved.
        outputs: output names to request (empty = all of them).
        reports_cold_start: whether the model has a ``cold_start`` output.
    """

    model: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    reports_cold_start: bool


@dataclass(frozen=True)
class InferOutcome:
    """What a successful response told us."""

    cold_start: bool | None
    provision_ms: float | None
    response_bytes: int


def model_io(model: str, metadata: Mapping[str, Any], max_batch_size: int, seq_len: int) -> ModelIO:
    """Resolve a model's request layout from its metadata (``inputs``/``outputs`` lists, as JSON).

    Args:
        model: model name, for error messages.
        metadata: Triton model metadata as a dict (HTTP or gRPC ``as_json`` form; dims may be strings).
        max_batch_size: from the model config; > 0 means the first metadata dim is the batch.
        seq_len: value for every other dynamic dimension (a rank-1 input of a non-batching model too).
    """
    inputs = []
    for spec in metadata.get("inputs", []):
        dims = [int(d) for d in spec.get("shape", [])]
        resolved = []
        for i, d in enumerate(dims):
            if d >= 0:
                resolved.append(d)
            else:
                is_batch = i == 0 and (max_batch_size > 0 or len(dims) >= 2)
                resolved.append(1 if is_batch else seq_len)
        if spec["datatype"] not in _NUMPY_TYPES:
            raise TargetError(
                f"model {model!r}: input {spec['name']!r} has datatype {spec['datatype']}, "
                f"the load test can only fill {sorted(_NUMPY_TYPES)}"
            )
        inputs.append(InputSpec(spec["name"], spec["datatype"], tuple(resolved)))
    if not inputs:
        raise TargetError(f"model {model!r}: metadata lists no inputs")
    names = [o["name"] for o in metadata.get("outputs", [])]
    wanted = tuple(n for n in REQUESTED_OUTPUTS if n in names)
    return ModelIO(model, tuple(inputs), wanted if "output" in wanted else (), "cold_start" in names)


TOKEN_LOW, TOKEN_HIGH = 100, 1000
"""Token ids sent by the load tests: inside every zoo vocabulary, the tiny test models' 1000 included."""


def input_array(spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    """Request data for one input (values described in the module docstring)."""
    dtype = _NUMPY_TYPES[spec.datatype]
    if "mask" in spec.name.lower() or spec.datatype == "BOOL":
        return np.ones(spec.shape, dtype=dtype)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(TOKEN_LOW, TOKEN_HIGH, size=spec.shape).astype(dtype)
    return rng.standard_normal(spec.shape).astype(dtype)


def parse_cold_start(value: np.ndarray | None) -> tuple[bool | None, float | None]:
    """``cold_start`` output -> (was_cold, provision_ms) of the request's first row."""
    if value is None:
        return None, None
    flat = np.asarray(value, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        return None, None
    return bool(flat[0] >= 0.5), (float(flat[1]) if flat.size > 1 else None)


def _strip_scheme(url: str) -> str:
    for scheme in ("grpc://", "http://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return url


def _client_module(protocol: str) -> Any:
    """``tritonclient.grpc`` or ``tritonclient.http``; a TargetError (not a hung load test) when it is missing.

    tritonclient raises RuntimeError, not ImportError, when an optional dependency (rapidjson, gevent) is absent.
    """
    try:
        return importlib.import_module(f"tritonclient.{protocol}")
    except (ImportError, RuntimeError) as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise TargetError(
            f"tritonclient.{protocol} cannot be imported: {exc}{cause}; install tritonclient[{protocol}]"
        ) from exc


class TritonTarget:
    """A Triton client (gRPC or HTTP) that knows how to send one request to each model."""

    def __init__(
        self,
        protocol: str = "grpc",
        url: str | None = None,
        seq_len: int = 384,
        timeout_s: float = 60.0,
        http_connections: int = 512,
        seed: int = 0,
    ) -> None:
        """Create the client (no network traffic yet).

        Args:
            protocol: ``grpc`` or ``http``.
            url: ``host:port``; default ``localhost:8001`` (gRPC) or ``localhost:8000`` (HTTP).
            seq_len: length of dynamic non-batch dimensions (sequence length of text models).
            timeout_s: per-request timeout; a request past it is logged as an error.
            http_connections: HTTP connection pool size; more requests than this in flight queue in the
                client (gRPC multiplexes on one channel and has no such bound).
            seed: seed of the request data.
        """
        if protocol not in PROTOCOLS:
            raise TargetError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if seq_len <= 0 or timeout_s <= 0:
            raise TargetError(f"seq_len ({seq_len}) and timeout_s ({timeout_s}) must be > 0")
        self.protocol = protocol
        self.url = _strip_scheme(url or DEFAULT_URLS[protocol])
        self.seq_len = seq_len
        self.timeout_s = timeout_s
        self._rng = np.random.default_rng(seed)
        self._io: dict[str, ModelIO] = {}
        self._requests: dict[str, tuple[list[Any], list[Any] | None]] = {}
        self._module: Any = _client_module(protocol)
        if protocol == "grpc":
            self._client: Any = self._module.InferenceServerClient(self.url)
        else:
            self._client = self._module.InferenceServerClient(
                self.url, concurrency=http_connections, connection_timeout=timeout_s, network_timeout=timeout_s
            )

    def _metadata(self, model: str) -> tuple[dict[str, Any], int]:
        if self.protocol == "grpc":
            metadata = self._client.get_model_metadata(model, as_json=True)
            config = self._client.get_model_config(model, as_json=True).get("config", {})
        else:
            metadata = self._client.get_model_metadata(model)
            config = self._client.get_model_config(model)
        return metadata, int(config.get("max_batch_size", 0) or 0)

    def discover(self, models: Sequence[str]) -> dict[str, ModelIO]:
        """Fetch metadata of every model and prepare its request; raises TargetError naming the model."""
        try:
            live = self._client.is_server_live()
        except Exception as exc:  # noqa: BLE001 - any transport error means the same thing here
            raise TargetError(f"Triton at {self.url} ({self.protocol}) is not reachable: {exc}") from exc
        if not live:
            raise TargetError(f"Triton at {self.url} ({self.protocol}) is not live")
        for model in models:
            if model in self._io:
                continue
            try:
                metadata, max_batch = self._metadata(model)
            except Exception as exc:  # noqa: BLE001
                raise TargetError(f"model {model!r} is not available on Triton at {self.url}: {exc}") from exc
            io = model_io(model, metadata, max_batch, self.seq_len)
            self._io[model] = io
            self._requests[model] = self._build_request(io)
        return dict(self._io)

    def _build_request(self, io: ModelIO) -> tuple[list[Any], list[Any] | None]:
        inputs = []
        for spec in io.inputs:
            tensor = self._module.InferInput(spec.name, list(spec.shape), spec.datatype)
            tensor.set_data_from_numpy(input_array(spec, self._rng))
            inputs.append(tensor)
        outputs = [self._module.InferRequestedOutput(name) for name in io.outputs] or None
        return inputs, outputs

    def infer(self, model: str) -> InferOutcome:
        """Send one request to ``model`` (discovered before); raises the client's exception on failure."""
        inputs, outputs = self._requests[model]
        if self.protocol == "grpc":
            result = self._client.infer(model, inputs, outputs=outputs, client_timeout=self.timeout_s)
            names = [o.name for o in result.get_response().outputs]
        else:
            result = self._client.infer(model, inputs, outputs=outputs)
            names = [o["name"] for o in result.get_response().get("outputs", [])]
        arrays = {n: result.as_numpy(n) for n in names}
        cold, provision = parse_cold_start(arrays.get("cold_start"))
        size = sum(int(a.nbytes) for a in arrays.values() if a is not None)
        return InferOutcome(cold, provision, size)

    def close(self) -> None:
        """Close the client's connections."""
        try:
            self._client.close()
        except Exception:  # noqa: BLE001,S110 - closing a broken channel must not mask the test's result
            pass
