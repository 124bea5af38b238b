"""A served model's configuration: config.pbtxt ``parameters`` validated into `ServeSettings`.

Every parameter a model of ``backend: "deepplan"`` accepts is parsed here, with an error (`ConfigError`) that names
the parameter and the values it takes; path parameters are confined to the roots of the model's `PathPolicy`.
`served_model.ServedModel` then builds the model from these settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .path_policy import PathPolicy, PathPolicyError
from .plan import ENGINES
from .residency import BUDGET_ENV, DEFAULT_RESERVE_BYTES, default_state_dir
from .zoo import ZOO, parse_dtype

PLAN_DIR_ENV = "DEEPPLAN_PLAN_REPOSITORY"
DEFAULT_PLAN_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepplan" / "plans"
"""Default plan repository (outside the model repository, where Triton would take a folder for a model)."""

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


class ConfigError(ValueError):
    """A model's `parameters` cannot be served; the message names the parameter and the accepted values."""


def parse_size(text: str, what: str) -> int:
    """``"64MiB"``, ``"2GB"``, ``"1048576"`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"parameter {what}: {text!r} is not a size (e.g. 1073741824, 512MiB, 2GB)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class ServeSettings:
    """A model's deepplan configuration (config.pbtxt ``parameters``), validated."""

    model: str
    engine: str = "deepplan"
    devices: tuple[int, ...] | None = None  # None = auto
    dtype: str = "float32"
    plan_repository: Path = DEFAULT_PLAN_DIR
    seq_len: int | None = None
    budget: int | None = None  # None = device memory minus reserve
    reserve: int = DEFAULT_RESERVE_BYTES
    residency_dir: Path | None = None
    seed: int = 0
    plan_batch: int = 1
    graphs: bool = True  # replay cold and warm forwards as CUDA graphs (ignored on CPU)
    process: str = "shared"  # shared: run in the per-GPU engine host (deepplan_backend.hosting); instance: in the stub
    target_gpu: int | None = None  # the target GPU of `devices auto` for a KIND_CPU front end (else Triton's GPU id)
    extra: Mapping[str, str] = field(default_factory=dict)
    path_policy: PathPolicy | None = None  # set when served from a model folder: paths stay inside its roots

    KNOWN = (
        "model",
        "engine",
        "devices",
        "dtype",
        "plan_repository",
        "seq_len",
        "budget",
        "reserve",
        "residency_dir",
        "seed",
        "plan_batch",
        "graphs",
        "process",
        "target_gpu",
    )
    PROCESSES = ("shared", "instance")

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], model_dir: Path | None = None) -> ServeSettings:
        """Validate ``{name: string}`` (Triton's ``parameters``, already unwrapped from ``string_value``).

        With `model_dir` (served by Triton), every path parameter is untrusted: a checkpoint folder (any `model`
        that is not a zoo name) is relative to the model's folder, and it, `plan_repository` and `residency_dir`
        must resolve inside the roots of `path_policy.PathPolicy.for_model` (ConfigError otherwise).
        """
        unknown = sorted(set(params) - set(cls.KNOWN))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(cls.KNOWN)}")
        model = params.get("model", "").strip()
        if not model:
            raise ConfigError('parameter model is required: a zoo name (e.g. "bert-base") or a checkpoint folder')
        engine = params.get("engine", "deepplan").strip()
        if engine not in ENGINES:
            raise ConfigError(f"parameter engine: {engine!r}; choose one of {', '.join(ENGINES)}")
        try:
            dtype = parse_dtype(params.get("dtype", "float32").strip())
        except ValueError as exc:
            raise ConfigError(f"parameter dtype: {exc}") from None
        root = model_dir.parent if model_dir is not None else Path.cwd()
        plan_repo = Path(params.get("plan_repository") or os.environ.get(PLAN_DIR_ENV) or DEFAULT_PLAN_DIR)
        if not plan_repo.is_absolute():
            plan_repo = root / plan_repo
        # The model's own parameter wins; else the server-wide environment (Docker sets it); else auto.
        budget_text = (params.get("budget") or os.environ.get(BUDGET_ENV) or "auto").strip() or "auto"
        residency_dir: str | Path = params.get("residency_dir", "").strip()
        policy = None
        if model_dir is not None:
            policy, model, plan_repo, residency_dir = _confine(model_dir, model, plan_repo, residency_dir)
        return cls(
            model=model,
            engine=engine,
            devices=_parse_devices(params.get("devices", "auto")),
            dtype=dtype,
            plan_repository=plan_repo,
            seq_len=_positive_int(params, "seq_len"),
            budget=None if budget_text == "auto" else parse_size(budget_text, "budget"),
            reserve=parse_size(params["reserve"], "reserve") if params.get("reserve") else DEFAULT_RESERVE_BYTES,
            residency_dir=Path(residency_dir) if residency_dir else None,
            seed=_positive_int(params, "seed", minimum=0) or 0,
            plan_batch=_positive_int(params, "plan_batch") or 1,
            graphs=_parse_bool(params, "graphs", default=True),
            process=parse_process(params),
            target_gpu=_positive_int(params, "target_gpu", minimum=0),
            path_policy=policy,
        )


def parse_process(params: Mapping[str, str]) -> str:
    """The ``process`` parameter: ``shared`` (default) or ``instance``."""
    text = (params.get("process") or "shared").strip()
    if text not in ServeSettings.PROCESSES:
        raise ConfigError(f"parameter process: {text!r}; choose one of {', '.join(ServeSettings.PROCESSES)}")
    return text


def _confine(
    model_dir: Path, model: str, plan_repo: Path, residency_dir: str | Path
) -> tuple[PathPolicy, str, Path, str | Path]:
    """The model's path policy and its path parameters resolved inside the roots (ConfigError if one is not)."""
    try:
        policy = PathPolicy.for_model(
            model_dir, Path(os.environ.get(PLAN_DIR_ENV) or DEFAULT_PLAN_DIR), default_state_dir()
        )
        if model not in ZOO:
            what = f"parameter model (not a zoo name: {', '.join(ZOO)}; so a checkpoint folder)"
            checkpoint = policy.check(model, what, base=model_dir, must_exist=True)
            policy.check_tree(checkpoint, "parameter model")
            model = str(checkpoint)
        plan_repo = policy.check(plan_repo, "parameter plan_repository", must_exist=False)
        if residency_dir:
            residency_dir = policy.check(
                residency_dir, "parameter residency_dir", base=model_dir.parent, must_exist=False
            )
    except PathPolicyError as exc:
        raise ConfigError(str(exc)) from None
    return policy, model, plan_repo, residency_dir


def _positive_int(params: Mapping[str, str], name: str, minimum: int = 1) -> int | None:
    text = params.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"parameter {name}: {text!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"parameter {name}: must be >= {minimum}, got {value}")
    return value


def _parse_bool(params: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A yes/no parameter (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`; empty or absent: `default`)."""
    text = params.get(name, "").strip().lower()
    if text == "":
        return default
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"parameter {name}: {text!r}; give true or false")


def _parse_devices(text: str) -> tuple[int, ...] | None:
    text = text.strip()
    if text in ("", "auto"):
        return None
    try:
        ids = tuple(int(p) for p in re.split(r"[\s,]+", text) if p)
    except ValueError:
        raise ConfigError(f'parameter devices: {text!r}; give "auto" or GPU ids, target first (e.g. "0,1")') from None
    if not ids or any(i < 0 for i in ids):
        raise ConfigError(f"parameter devices: {text!r}: ids must be >= 0")
    return ids
