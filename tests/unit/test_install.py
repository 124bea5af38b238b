"""The deepplan backend installation: exactly the listed files, clear errors, wheel layout."""

import os
import sys
from pathlib import Path

import pytest

from deepplan_backend import install


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    (src / "other.py").write_text("# not part of the installation\n")
    return src


def test_backend_files_are_model_py_only():
    assert install.BACKEND_FILES == ("model.py",)
    assert install.BACKEND_NAME == "deepplan"


def test_install_backend_copies_exactly_the_listed_files(tmp_path):
    target = install.install_backend(tmp_path / "backends", source_dir=_source(tmp_path))
    assert target == tmp_path / "backends" / "deepplan"
    assert sorted(p.name for p in target.iterdir()) == ["model.py"]
    assert "TritonPythonModel" in (target / "model.py").read_text()


def test_install_backend_overwrites_an_older_copy(tmp_path):
    src = _source(tmp_path)
    install.install_backend(tmp_path / "b", source_dir=src)
    (src / "model.py").write_text("# v2\n")
    install.install_backend(tmp_path / "b", source_dir=src)
    assert (tmp_path / "b" / "deepplan" / "model.py").read_text() == "# v2\n"
    assert [p.name for p in (tmp_path / "b" / "deepplan").iterdir()] == ["model.py"]  # no temp leftovers


def test_missing_file_raises_and_copies_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(install.InstallError, match=r"model\.py missing in .*empty"):
        install.install_backend(tmp_path / "b", source_dir=empty)
    assert not (tmp_path / "b").exists()


def test_listed_files_exist_in_the_package_once_model_py_is_written():
    # model.py comes from the lead; until then this reports it instead of passing silently.
    missing = [f for f in install.BACKEND_FILES if not (install.SOURCE_DIR / f).is_file()]
    if missing:
        pytest.xfail(f"not written yet: {missing}")
    install.check_backend_sources()


def test_wheel_layout_is_found():
    dist = install.find_triton_dist()
    assert dist.server.is_file() and os.access(dist.server, os.X_OK)
    assert (dist.python_backend / install.PYTHON_BACKEND_LIB).is_file()
    assert dist.stub_for(install.current_python_version()).is_file()


def test_unknown_python_version_names_the_available_stubs():
    with pytest.raises(install.InstallError, match=r"no Python backend stub for Python 2\.7.*3\.11"):
        install.find_triton_dist().stub_for("2.7")


def test_prepare_backends_dir_places_the_stub_next_to_the_python_backend(tmp_path):
    backends = install.prepare_backends_dir(tmp_path / "b", source_dir=_source(tmp_path))
    python = backends / "python"
    assert (python / install.PYTHON_BACKEND_LIB).is_file()
    assert os.access(python / install.PYTHON_BACKEND_STUB, os.X_OK)
    assert (backends / "deepplan" / "model.py").is_file()
    install.check_python_backend(backends)


def test_cli_refuses_a_backends_dir_without_the_python_backend(tmp_path, capsys):
    rc = install.main(["--backends-dir", str(tmp_path / "b"), "--source-dir", str(_source(tmp_path))])
    assert rc == 1
    assert "--python-backend-from-wheel" in capsys.readouterr().err


def test_cli_from_wheel(tmp_path, capsys):
    argv = ["--backends-dir", str(tmp_path / "b"), "--source-dir", str(_source(tmp_path))]
    assert install.main([*argv, "--python-backend-from-wheel"]) == 0
    assert "installed the 'deepplan' backend" in capsys.readouterr().out
    assert install.main(argv) == 0  # now the Python backend is there


def test_current_python_version():
    assert install.current_python_version() == f"{sys.version_info.major}.{sys.version_info.minor}"
