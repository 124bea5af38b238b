"""Path roots (`runtime/path_policy.py` and its use in `ServeSettings`), no remote code, hostile plan files.

- `PathPolicy`: `..`, absolute paths and symlinks that lead out of the roots are refused with a clear error;
  symlinks that stay inside are fine; the env allow-list widens the roots.
- `ServeSettings.from_parameters(model_dir=...)` (what the Triton backend calls) applies it to ``model``,
  ``plan_repository`` and ``residency_dir``; `plan_or_make` refuses a planted symlink or FIFO as plan file.
- A checkpoint folder asking for remote code (``auto_map``) never runs the ``.py`` files it ships.
- A few hundred generated corrupted plan files through the repository API: only PlanError, no file descriptor
  or memory leak; through `plan_or_make` a corrupted plan is replaced by a fresh one.
"""

from __future__ import annotations

import gc
import json
import os
import random
import threading
import tracemalloc
from pathlib import Path

import pytest

from deepplan_backend.runtime import path_policy
from deepplan_backend.runtime.path_policy import (
    ALLOWED_ROOTS_ENV,
    PathPolicy,
    PathPolicyError,
    ensure_private_folder,
    env_roots,
)
from deepplan_backend.runtime.plan import DHA, PlanError
from deepplan_backend.runtime.plan_messages import PlanFileMessage
from deepplan_backend.runtime.plan_repository import MAX_PLAN_BYTES, load_plan, plan_path, plan_to_bytes, read_plan
from deepplan_backend.runtime.serve_settings import PLAN_DIR_ENV, ConfigError, ServeSettings
from deepplan_backend.runtime.served_model import plan_or_make


@pytest.fixture()
def tree(tmp_path, monkeypatch):
    """``root/repo/m`` (a model folder), ``root/plans`` (server plan repository), ``root/outside`` (anything else)."""
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    monkeypatch.setenv(PLAN_DIR_ENV, str(tmp_path / "plans"))
    monkeypatch.setenv("DEEPPLAN_RESIDENCY_DIR", str(tmp_path / "residency"))
    model = tmp_path / "repo" / "m"
    (model / "1").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    return tmp_path


# ---- PathPolicy ------------------------------------------------------------------------------------------------


def test_inside_is_allowed_and_resolved(tree):
    policy = PathPolicy.of([tree / "repo"])
    (tree / "repo" / "m" / "ckpt").mkdir()
    assert policy.check("ckpt", "weights", base=tree / "repo" / "m") == (tree / "repo" / "m" / "ckpt").resolve()
    assert policy.check("./m/../m/ckpt", "weights", base=tree / "repo") == (tree / "repo" / "m" / "ckpt").resolve()
    assert policy.check(tree / "repo" / "new" / "plans", "plans", must_exist=False) == tree.resolve() / "repo/new/plans"


@pytest.mark.parametrize("path", ["../../outside", "../../../../../etc", "/etc", "/", "1/../../../outside/secret.txt"])
def test_dotdot_and_absolute_paths_outside_are_refused(tree, path):
    policy = PathPolicy.of([tree / "repo"])
    with pytest.raises(PathPolicyError, match="outside the allowed roots") as err:
        policy.check(path, "parameter model", base=tree / "repo" / "m")
    assert "parameter model" in str(err.value) and "through a symlink" not in str(err.value)
    assert ALLOWED_ROOTS_ENV in str(err.value)  # says how to allow it


def test_missing_path_outside_is_reported_as_outside_not_missing(tree):
    policy = PathPolicy.of([tree / "repo"])
    with pytest.raises(PathPolicyError, match="outside the allowed roots"):
        policy.check("../../nowhere", "parameter model", base=tree / "repo" / "m")
    with pytest.raises(PathPolicyError, match="does not exist"):
        policy.check("nowhere", "parameter model", base=tree / "repo" / "m")


def test_symlink_escaping_is_refused_and_named(tree):
    model = tree / "repo" / "m"
    (model / "weights").symlink_to(tree / "outside")
    (model / "to_etc").symlink_to("/etc")
    policy = PathPolicy.of([tree / "repo"])
    for name in ("weights", "weights/secret.txt", "to_etc", "./to_etc/passwd"):
        with pytest.raises(PathPolicyError, match="through a symlink to .*outside the allowed roots"):
            policy.check(name, "parameter model", base=model)
    # a symlinked component in the middle escapes too, even when the rest does not exist yet
    with pytest.raises(PathPolicyError, match="through a symlink"):
        policy.check(model / "weights" / "new" / "plans", "parameter plan_repository", must_exist=False)


def test_symlinks_that_stay_inside_are_fine(tree):
    repo = tree / "repo"
    (repo / "shared").mkdir()
    (repo / "m" / "weights").symlink_to(repo / "shared")
    policy = PathPolicy.of([repo])
    assert policy.check("weights", "parameter model", base=repo / "m") == (repo / "shared").resolve()
    # a root reached through a symlink: compared after resolving both
    (tree / "alias").symlink_to(repo)
    assert PathPolicy.of([tree / "alias"]).check(repo / "m", "model") == (repo / "m").resolve()
    assert PathPolicy.of([repo]).check(tree / "alias" / "m", "model") == (repo / "m").resolve()


def test_symlink_loop_is_a_clear_error(tree):
    model = tree / "repo" / "m"
    (model / "a").symlink_to(model / "b")
    (model / "b").symlink_to(model / "a")
    with pytest.raises(PathPolicyError):
        PathPolicy.of([tree / "repo"]).check("a", "parameter model", base=model)


def test_relative_path_without_base_is_refused(tree):
    with pytest.raises(PathPolicyError, match="relative"):
        PathPolicy.of([tree]).check("repo", "parameter model")


def test_env_allow_list(tree):
    sep = os.pathsep
    env = {ALLOWED_ROOTS_ENV: f"{tree / 'outside'}{sep}{sep} /data/models "}
    assert env_roots(env) == (tree / "outside", Path("/data/models"))
    with pytest.raises(PathPolicyError, match="not an absolute path"):
        env_roots({ALLOWED_ROOTS_ENV: "relative/dir"})
    policy = PathPolicy.for_model(tree / "repo" / "m", None, env=env)
    assert policy.check("../../outside/secret.txt", "weights", base=tree / "repo" / "m").name == "secret.txt"
    assert PathPolicy.for_model(tree / "repo" / "m", env={}).roots == (
        (tree / "repo" / "m").resolve(),
        (tree / "repo").resolve(),
    )


def test_check_tree_refuses_an_escaping_link_at_any_depth(tree):
    ckpt = tree / "repo" / "m" / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "sub" / "ok").symlink_to(ckpt / "config.json")
    policy = PathPolicy.of([tree / "repo"])
    policy.check_tree(ckpt, "parameter model")  # inside links are fine
    (ckpt / "sub" / "model.safetensors").symlink_to(tree / "outside" / "secret.txt")
    with pytest.raises(PathPolicyError, match=r"entry sub/model.safetensors.*through a symlink"):
        policy.check_tree(ckpt, "parameter model")
    with pytest.raises(PathPolicyError, match="more than 2 entries"):
        policy.check_tree(ckpt, "parameter model", max_entries=2)


# ---- ServeSettings (what the Triton backend calls) -------------------------------------------------------------


def settings(tree, **params):
    return ServeSettings.from_parameters({"model": "tiny-bert", **params}, model_dir=tree / "repo" / "m")


def test_zoo_model_and_default_dirs_pass(tree):
    s = settings(tree)
    assert s.model == "tiny-bert"
    assert s.plan_repository == (tree / "plans").resolve()
    assert s.path_policy is not None and (tree / "repo").resolve() in s.path_policy.roots
    s = settings(tree, plan_repository="plans", residency_dir="state")  # relative to the model repository
    assert s.plan_repository == (tree / "repo" / "plans").resolve()
    assert s.residency_dir == (tree / "repo" / "state").resolve()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model": "../../outside"}, "parameter model .* outside the allowed roots"),
        ({"model": "../../../../../../../etc"}, "parameter model .* outside the allowed roots"),
        ({"model": "/etc"}, "parameter model .*'/etc' resolves to /etc, outside"),
        ({"model": "weights"}, "parameter model .* through a symlink"),
        ({"model": "missing-ckpt"}, "not a zoo name.*does not exist"),
        ({"plan_repository": "/etc/deepplan"}, "parameter plan_repository: '/etc/deepplan' resolves to"),
        ({"plan_repository": "../outside/plans"}, "parameter plan_repository: .* outside"),
        ({"residency_dir": "/tmp"}, "parameter residency_dir: .* outside"),
    ],
)
def test_paths_outside_the_roots_are_config_errors(tree, params, message):
    (tree / "repo" / "m" / "weights").symlink_to(tree / "outside")
    with pytest.raises(ConfigError, match=message):
        settings(tree, **params)


def test_allow_list_from_the_environment(tree, monkeypatch):
    with pytest.raises(ConfigError):
        settings(tree, plan_repository=str(tree / "outside" / "plans"))
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, str(tree / "outside"))
    assert settings(tree, plan_repository=str(tree / "outside" / "plans")).plan_repository.name == "plans"
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, "not/absolute")
    with pytest.raises(ConfigError, match="not an absolute path"):
        settings(tree)


def test_without_model_dir_nothing_is_confined(tree):
    # tools and tests that build settings themselves are the operator's own code
    s = ServeSettings.from_parameters({"model": "tiny-bert", "plan_repository": "/tmp/x"})
    assert s.path_policy is None and s.plan_repository == Path("/tmp/x")


def _checkpoint(folder: Path, **config_extra) -> Path:
    from deepplan_backend.runtime.zoo import load_model

    load_model("tiny-bert").module.inner.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(config_extra)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_checkpoint_in_the_model_folder_is_served_by_bare_name(tree):
    _checkpoint(tree / "repo" / "m" / "ckpt")
    assert settings(tree, model="ckpt").model == str((tree / "repo" / "m" / "ckpt").resolve())
    # a link inside the checkpoint that escapes is refused
    (tree / "repo" / "m" / "ckpt" / "tokenizer.json").symlink_to(tree / "outside" / "secret.txt")
    with pytest.raises(ConfigError, match="entry tokenizer.json"):
        settings(tree, model="ckpt")


# ---- plan repository entries planted by someone else -----------------------------------------------------------


class _Prepared:
    """Just enough of a PreparedModel for `plan_or_make` to compute its key (never profiled here)."""

    fingerprint = "fp"

    def plan_key(self, batch, seq, gpu, graphs=False):
        from deepplan_backend.runtime.plan import PlanKey

        return PlanKey("tiny-bert", batch, seq or 128, "float32", gpu, "graphs" if graphs else "eager")


def test_planted_symlink_or_fifo_as_plan_file_is_refused_not_opened(tree):
    import torch

    s = settings(tree, plan_repository="plans")
    key = _Prepared().plan_key(1, None, "cpu")
    s.plan_repository.mkdir(parents=True)
    target = plan_path(s.plan_repository, key)
    target.symlink_to(tree / "outside" / "secret.txt")
    with pytest.raises(ConfigError, match="plan file: .* through a symlink"):
        plan_or_make(_Prepared(), s, [torch.device("cpu")])
    target.unlink()
    os.mkfifo(target)  # opening it for reading would block the stub forever
    done = threading.Event()

    def call():
        with pytest.raises(ConfigError, match="not a regular file"):
            plan_or_make(_Prepared(), s, [torch.device("cpu")])
        done.set()

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(10)
    assert done.is_set(), "plan_or_make blocked on a FIFO"


# ---- Hugging Face checkpoints never run remote code ------------------------------------------------------------

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
from transformers import BertModel as EvilModel, BertConfig as EvilConfig
"""


@pytest.mark.parametrize("model_type", ["bert", "evil"])
def test_checkpoint_asking_for_remote_code_never_runs_it(tree, model_type):
    from deepplan_backend.runtime.zoo import ModelSourceError, load_model

    marker = tree / "outside" / "marker"
    folder = tree / "repo" / "m" / "ckpt"
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    _checkpoint(folder, model_type=model_type, auto_map=auto_map, architectures=["EvilModel"])
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    (folder / "__init__.py").write_text(EVIL.format(marker=str(marker)))
    checkpoint = settings(tree, model="ckpt").model
    if model_type == "bert":  # a supported type: loaded with the built-in class, the .py files are ignored
        model = load_model(checkpoint)
        assert type(model.module.inner).__name__ == "BertModel"
    else:  # an unknown type is refused before transformers sees it
        with pytest.raises(ModelSourceError, match="model_type 'evil' is not supported"):
            load_model(checkpoint)
    assert not marker.exists(), "a .py file shipped in the checkpoint was executed"


def test_zoo_loads_checkpoints_with_trust_remote_code_off():
    import inspect

    from deepplan_backend.runtime import zoo

    source = inspect.getsource(zoo)
    assert "trust_remote_code=False" in source and "trust_remote_code=True" not in source


# ---- hostile plan files: a few hundred through the repository API -----------------------------------------------


def _good_plan_bytes() -> bytes:
    from tests.unit.test_plan_repository import make_plan_obj

    return plan_to_bytes(make_plan_obj(num_layers=24))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def corrupted_plans(good: bytes, n: int, seed: int = 7):
    """`n` generated broken plan files: truncations, bit flips, splices, huge counts, bad indices, junk."""
    rng = random.Random(seed)
    base = PlanFileMessage()
    base.ParseFromString(good)

    def mutated(fn):
        msg = PlanFileMessage()
        msg.CopyFrom(base)
        fn(msg)
        return msg.SerializeToString()

    nl, nv = len(base.layers), len(base.variants)
    structured = [
        lambda m: m.variants[nv - 1].sources.__setitem__(rng.randrange(nl), rng.choice([2, 3, 1 << 20, -5])),
        lambda m: setattr(m.layers[rng.randrange(nl)], "index", rng.randrange(nl + 1, 1 << 30)),
        lambda m: setattr(m.layers[rng.randrange(nl)], "nbytes", (1 << 62) + rng.randrange(1000)),
        lambda m: setattr(m.layers[rng.randrange(nl)], "load_ms", rng.choice([float("nan"), -1.0, 1e308])),
        lambda m: m.variants[rng.randrange(nv)].sources.extend([0] * rng.randrange(1, 50)),
        lambda m: setattr(m, "schema_version", rng.randrange(2, 1 << 31)),
        lambda m: setattr(m.variants[rng.randrange(nv)], "num_devices", rng.choice([0, 65, 1 << 30])),
        lambda m: m.ClearField(rng.choice(["variants", "links", "key", "layers"])),
    ]
    for i in range(n):
        kind = i % 6
        if kind == 0:
            yield "truncated", good[: rng.randrange(len(good))]
        elif kind == 1:
            data = bytearray(good)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            yield "bitflip", bytes(data)
        elif kind == 2:
            data = bytearray(good)
            at = rng.randrange(len(data))
            data[at : at + rng.randint(1, 64)] = rng.randbytes(rng.randint(0, 64))
            yield "splice", bytes(data)
        elif kind == 3:
            yield "structured", mutated(rng.choice(structured))
        elif kind == 4:  # repeated fields claiming huge counts or lengths
            field = rng.choice([5, 8, 6, 99])
            claim = _varint((field << 3) | 2) + _varint(rng.choice([1 << 31, 1 << 40, 1 << 62]))
            if rng.random() < 0.2:  # more layer rows than any model has (walking them costs time: a few)
                yield "huge", good + (_varint((5 << 3) | 2) + b"\x00") * rng.randint(20_001, 25_000)
            else:
                yield "huge", good + claim
        else:
            yield "junk", rng.choice([b"", rng.randbytes(rng.randint(1, 8192)), b"\xff" * rng.randint(1, 64)])


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_few_hundred_corrupted_plans_are_rejected_without_crash_or_leak(tmp_path):
    from deepplan_backend.runtime.plan import PlanKey

    key = PlanKey("bert-base", 1, 384, "float32", "NVIDIA H200")
    good = _good_plan_bytes()
    path = plan_path(tmp_path, key)
    path.write_bytes(good)
    load_plan(tmp_path, key, "abc123")  # warm up caches before measuring
    cases = list(corrupted_plans(good, 360))
    assert len(cases) >= 300

    def run_all(some: list[tuple[str, bytes]]) -> dict[str, int]:
        rejected: dict[str, int] = {}
        for kind, data in some:
            path.write_bytes(data)
            try:
                plan = load_plan(tmp_path, key, "abc123")
            except PlanError:
                rejected[kind] = rejected.get(kind, 0) + 1
                continue
            except Exception as exc:  # pragma: no cover - the failure being tested for
                pytest.fail(f"{kind}: {type(exc).__name__} escaped: {exc}")
            # a flip inside a name or a time can leave a valid plan; it must then be the plan asked for
            assert plan.key == key and plan.fingerprint == "abc123"
            assert all(s == DHA or 0 <= s < v.num_devices for v in plan.variants for s in v.schedule.sources)
        return rejected

    fds = _open_fds()
    run_all(cases[:60])  # first round: protobuf and regex caches settle
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rejected = run_all(cases)
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(rejected.values()) >= 250, rejected
    assert {"truncated", "structured", "huge", "junk"} <= rejected.keys()
    assert rejected["huge"] == sum(1 for k, _ in cases if k == "huge")  # bounded counts: every one refused
    assert _open_fds() == fds, "a file descriptor leaked"
    assert after - before < 256 * 1024, f"memory grew by {after - before} bytes over {len(cases)} files"
    # bounded, not proportional to what a file claims: `read_plan` reads with a buffer of the size cap (Python
    # allocates the whole buffer up front), so the peak is the cap plus a little, whatever the file says
    assert peak - before < MAX_PLAN_BYTES + 8 * 1024 * 1024, f"peak {peak - before} bytes"


@pytest.mark.slow
def test_plan_or_make_replaces_a_corrupted_plan(tree):
    """Through the served path: a corrupted plan in the plan repository is re-planned (and saved valid)."""
    import torch

    from deepplan_backend.runtime.prepared import prepare_shared

    s = settings(tree, model="tiny-gpt2", plan_repository="plans")
    prepared = prepare_shared("tiny-gpt2")
    device_lock = _CountingLock()
    plan, made = plan_or_make(prepared, s, [torch.device("cpu")], device_lock)
    assert made and device_lock.taken == 1  # profiling has the devices to itself
    path = plan_path(s.plan_repository, plan.key)
    good = path.read_bytes()
    for kind, data in list(corrupted_plans(good, 5, seed=3))[::4]:  # truncated, huge (each re-plan profiles)
        path.write_bytes(data)
        again, made = plan_or_make(prepared, s, [torch.device("cpu")])
        assert made, kind
        assert again.key == plan.key and read_plan(path).fingerprint == prepared.fingerprint
    # and a valid one is reused, without waiting for the device
    assert plan_or_make(prepared, s, [torch.device("cpu")], device_lock)[1] is False
    assert device_lock.taken == 1


class _CountingLock:
    """A device lock that counts how often it was taken."""

    def __init__(self) -> None:
        self.taken = 0

    def __enter__(self) -> None:
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        pass


def test_module_exports():
    assert path_policy.ALLOWED_ROOTS_ENV == "DEEPPLAN_ALLOWED_ROOTS"


def test_a_private_folder_is_made_0700_and_a_shared_or_linked_one_refused(tmp_path: Path) -> None:
    made = tmp_path / "a" / "b"
    ensure_private_folder(made, 0o077)
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    readable = tmp_path / "readable"
    readable.mkdir(mode=0o755)
    readable.chmod(0o755)
    ensure_private_folder(readable, 0o022)  # others may read weights images' folder, not write it
    with pytest.raises(PermissionError, match="only its owner"):
        ensure_private_folder(readable, 0o077)  # ... but not the sockets' folder
    readable.chmod(0o775)
    with pytest.raises(PermissionError, match="others cannot write"):
        ensure_private_folder(readable, 0o022)
    link = tmp_path / "link"
    link.symlink_to(made)
    with pytest.raises(PermissionError, match="must be a folder"):
        ensure_private_folder(link, 0o022)
