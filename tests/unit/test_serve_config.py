"""serve.py without starting a server: config checks, command line, environment, port check, CLI errors."""

import socket
import sys
from pathlib import Path

import pytest

from deepplan_backend import __main__ as entry
from deepplan_backend import install, serve


def cfg(tmp_path: Path, **kw) -> serve.ServeConfig:
    return serve.ServeConfig(**{"admin_token": "tok-en_1", "model_repository": tmp_path, "cache_dir": tmp_path, **kw})


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((host, 0))
    s.listen()
    return s


def test_defaults_are_loopback_and_standard_ports(tmp_path):
    c = cfg(tmp_path)
    assert c.host == "127.0.0.1"
    assert c.ports == {"HTTP": 8000, "gRPC": 8001, "metrics": 8002}
    assert c.load_models == ("*",)
    assert serve.DEFAULT_MODEL_REPOSITORY == serve.REPO_ROOT / "model_repository"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"admin_token": "a:b"}, "may only hold"),
        ({"admin_token": "a b"}, "may only hold"),
        ({"http_port": 0}, "HTTP port must be in 1..65535"),
        ({"grpc_port": 8000}, "must differ"),
        ({"load_models": ("*", "bert")}, "cannot be combined"),
        ({"model_repository": Path("/nonexistent/repo")}, "is not a folder"),
    ],
)
def test_config_errors(tmp_path, kw, message):
    with pytest.raises(serve.ServeError, match=message):
        cfg(tmp_path, **kw)


def test_urls_use_loopback_when_bound_everywhere(tmp_path):
    c = cfg(tmp_path, host="0.0.0.0", http_port=9000)
    assert c.url("HTTP") == "127.0.0.1:9000"
    assert cfg(tmp_path, host="::1").url("gRPC") == "[::1]:8001"


def test_command_line(tmp_path):
    dist = install.find_triton_dist()
    cmd = serve.server_command(cfg(tmp_path), dist, tmp_path / "backends", shm_prefix="p-")
    assert cmd[0] == str(dist.server)
    for flag in (
        f"--model-repository={tmp_path.resolve()}",
        f"--backend-directory={tmp_path / 'backends'}",
        "--model-control-mode=explicit",
        "--load-model=*",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--http-port=8000",
        "--http-restricted-api=model-repository:deepplan-key=tok-en_1",
        "--grpc-restricted-protocol=model-repository:deepplan-key=tok-en_1",
        "--backend-config=python,shm-region-prefix-name=p-",
    ):
        assert flag in cmd
    assert serve.server_command(cfg(tmp_path, extra_args=("--log-info=false",)), dist, tmp_path)[-1] == (
        "--log-info=false"
    )


def test_environment_for_the_stub():
    dist = install.find_triton_dist()
    env = serve.server_env(dist, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/x", "PYTHONPATH": "/y"})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["PATH"].endswith(":/usr/bin")
    assert str(dist.libs) in env["LD_LIBRARY_PATH"].split(":")
    assert env["LD_LIBRARY_PATH"].endswith(":/x")
    assert env["PYTHONPATH"] == f"{serve.REPO_ROOT}:/y"


def test_port_check(tmp_path):
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(serve.PortInUseError, match=rf"port {port} \(metrics\) on 127.0.0.1 is already in use"):
            serve.check_ports_free("127.0.0.1", {"metrics": port})
    serve.check_ports_free("127.0.0.1", {"metrics": port})  # released: free again


def test_admin_token_from_env_or_generated():
    assert serve.resolve_admin_token({serve.ADMIN_TOKEN_ENV: "abc"}) == ("abc", False)
    token, generated = serve.resolve_admin_token({})
    assert generated and len(token) >= 24
    assert serve.resolve_admin_token({})[0] != token


def test_backends_dir_is_per_source(tmp_path):
    a = serve.backends_dir_for(tmp_path, tmp_path / "a")
    assert a != serve.backends_dir_for(tmp_path, tmp_path / "b")
    assert a.parent == tmp_path / "backends"


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(serve.CACHE_DIR_ENV, str(tmp_path))
    assert serve.default_cache_dir() == tmp_path
    monkeypatch.delenv(serve.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert serve.default_cache_dir() == tmp_path / "xdg" / "deepplan-triton"


def test_cli_warns_for_0000_and_fails_on_a_taken_port(tmp_path, capsys):
    with listening_socket("0.0.0.0") as taken:
        port = taken.getsockname()[1]
        rc = entry.main(["serve", "--host", "0.0.0.0", "--model-repository", str(tmp_path), "--http-port", str(port)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "WARNING: binding to 0.0.0.0" in err
    assert f"port {port} (HTTP) on 0.0.0.0 is already in use" in err


def test_entry_point_dispatch(capsys):
    assert entry.main(["--help"]) == 0
    assert "serve" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        entry.main(["install", "--help"])
    assert exc.value.code == 0
