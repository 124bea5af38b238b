"""What a ``deepplan`` Triton backend installation contains, and how to install it.

Triton (since 23.10) runs *Python-based backends*: a folder ``<backends-dir>/<name>/`` holding a
``model.py``, executed by the regular Python backend (``<backends-dir>/python/libtriton_python.so`` and its
``triton_python_backend_stub``). Models select it with ``backend: "deepplan"`` in ``config.pbtxt``.

This module is the single definition of that installation (:data:`BACKEND_FILES`) and is used by both the
embedded launcher (:mod:`deepplan_backend.serve`) and the Dockerfile::

    python3 -m deepplan_backend.install --backends-dir /opt/tritonserver/backends
    python3 -m deepplan_backend.install --backends-dir build/backends --python-backend-from-wheel

The NGC ``tritonserver`` image already ships the Python backend; outside it, the Python backend and the
stub for the running interpreter come from the ``nvidia-pytriton`` wheel (:func:`install_python_backend`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BACKEND_NAME = "deepplan"
"""Name of the backend folder, and the value models put in ``backend: "..."``."""

BACKEND_FILES: tuple[str, ...] = ("model.py",)
"""Files copied from :data:`SOURCE_DIR` into ``<backends-dir>/deepplan/``, and nothing else.

``model.py`` imports the runtime as the package ``deepplan_backend.runtime`` (found through ``PYTHONPATH``
or an installed package), so the runtime itself is not copied; keep this list explicit.
"""

SOURCE_DIR = Path(__file__).resolve().parent
"""Folder the files of :data:`BACKEND_FILES` are taken from by default (this package)."""

PYTHON_BACKEND_LIB = "libtriton_python.so"
PYTHON_BACKEND_STUB = "triton_python_backend_stub"


class InstallError(RuntimeError):
    """A backend installation could not be made; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class TritonDist:
    """Paths of the Triton server bundled in the ``nvidia-pytriton`` wheel.

    Attributes:
        root: ``site-packages/pytriton/tritonserver``.
        server: the ``tritonserver`` executable (``root/bin/tritonserver``).
        libs: ``site-packages/nvidia_pytriton.libs``; must be on ``LD_LIBRARY_PATH`` for the Python backend
            and the stub once they are copied away from the wheel (their RPATH is relative to the wheel).
        python_backend: ``root/backends/python`` (``libtriton_python.so`` and its utils module).
        stubs: ``root/python_backend_stubs``, one ``<X.Y>/triton_python_backend_stub`` per Python version.
        caches: ``root/caches`` (``--cache-directory``).
    """

    root: Path
    server: Path
    libs: Path
    python_backend: Path
    stubs: Path
    caches: Path

    def stub_for(self, python_version: str) -> Path:
        """Return the stub built for ``python_version`` (``"3.11"``), or raise :class:`InstallError`."""
        stub = self.stubs / python_version / PYTHON_BACKEND_STUB
        if not stub.is_file():
            available = sorted(p.name for p in self.stubs.iterdir() if p.is_dir()) if self.stubs.is_dir() else []
            raise InstallError(
                f"the nvidia-pytriton wheel has no Python backend stub for Python {python_version} "
                f"(looked for {stub}); stubs exist for: {', '.join(available) or 'none'}. "
                "Run the server from a virtual environment of one of those Python versions."
            )
        return stub


def find_triton_dist() -> TritonDist:
    """Locate the Triton server inside the installed ``nvidia-pytriton`` wheel.

    Only the package location is looked up: importing ``pytriton`` would pull in its whole client stack.

    Raises:
        InstallError: the wheel is missing or does not have the expected layout.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise InstallError(
            "the nvidia-pytriton wheel is not installed in this environment "
            f"({sys.executable}); install it with: pip install 'nvidia-pytriton>=0.5'"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    dist = TritonDist(
        root=root,
        server=root / "bin" / "tritonserver",
        libs=package.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stubs=root / "python_backend_stubs",
        caches=root / "caches",
    )
    missing = [
        p for p in (dist.server, dist.libs, dist.python_backend / PYTHON_BACKEND_LIB, dist.stubs) if not p.exists()
    ]
    if missing:
        raise InstallError(
            f"the nvidia-pytriton wheel at {package} lacks {', '.join(map(str, missing))}; "
            "it may be an editable/source install without the bundled server. Reinstall the wheel: "
            "pip install --force-reinstall 'nvidia-pytriton>=0.5'"
        )
    return dist


def current_python_version() -> str:
    """Return ``"X.Y"`` of the running interpreter (the stub must match the Python it embeds)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file and a rename.

    A rename never truncates the old file in place, so a server still running from ``dst`` (an mmapped
    ``.so``, a stub being exec'd) and a second launcher preparing the same folder are both safe.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_backend_sources(
    source_dir: Path = SOURCE_DIR, *, files: Sequence[str] = BACKEND_FILES, name: str = BACKEND_NAME
) -> None:
    """Raise :class:`InstallError` naming every file of ``files`` that is missing in ``source_dir``."""
    missing = [f for f in files if not (Path(source_dir) / f).is_file()]
    if missing:
        raise InstallError(
            f"cannot install the {name!r} backend: {', '.join(missing)} missing in {source_dir} "
            f"(a {name!r} backend installation is exactly: {', '.join(files)})"
        )


def install_backend(
    backends_dir: Path,
    *,
    source_dir: Path = SOURCE_DIR,
    files: Sequence[str] = BACKEND_FILES,
    name: str = BACKEND_NAME,
) -> Path:
    """Copy the backend files into ``<backends_dir>/<name>/`` and return that folder.

    Every listed file is checked before anything is copied, so a failed install leaves no half backend.

    Args:
        backends_dir: Triton's ``--backend-directory``.
        source_dir: folder holding ``files`` (tests pass a temporary folder).
        files: file names relative to ``source_dir``; defaults to :data:`BACKEND_FILES`.
        name: backend name; defaults to :data:`BACKEND_NAME`.

    Raises:
        InstallError: a listed file is missing from ``source_dir``.
    """
    check_backend_sources(source_dir, files=files, name=name)
    target = Path(backends_dir) / name
    for f in files:
        _copy_atomic(source_dir / f, target / f)
    return target


def install_python_backend(
    backends_dir: Path, *, dist: TritonDist | None = None, python_version: str | None = None
) -> Path:
    """Copy the wheel's Python backend plus the stub for ``python_version`` into ``<backends_dir>/python/``.

    Triton looks for ``triton_python_backend_stub`` next to ``libtriton_python.so``; the wheel keeps one
    stub per Python version in a separate folder, so it has to be placed there.

    Args:
        backends_dir: Triton's ``--backend-directory``.
        dist: the wheel's layout; found with :func:`find_triton_dist` when omitted.
        python_version: ``"X.Y"``; defaults to the running interpreter.

    Returns:
        ``<backends_dir>/python``.
    """
    dist = dist or find_triton_dist()
    stub = dist.stub_for(python_version or current_python_version())
    target = Path(backends_dir) / "python"
    for src in sorted(dist.python_backend.iterdir()):
        if src.is_file():  # skips __pycache__
            _copy_atomic(src, target / src.name)
    _copy_atomic(stub, target / PYTHON_BACKEND_STUB)
    return target


def check_python_backend(backends_dir: Path) -> None:
    """Raise :class:`InstallError` when ``backends_dir`` lacks the Python backend a Python-based one needs."""
    python = Path(backends_dir) / "python"
    missing = [f for f in (PYTHON_BACKEND_LIB, PYTHON_BACKEND_STUB) if not (python / f).is_file()]
    if missing:
        raise InstallError(
            f"{python} lacks {', '.join(missing)}: the {BACKEND_NAME!r} backend runs on Triton's Python "
            "backend. Use a tritonserver image that has it, or pass --python-backend-from-wheel to copy it "
            "from the nvidia-pytriton wheel."
        )


def prepare_backends_dir(backends_dir: Path, *, source_dir: Path = SOURCE_DIR, dist: TritonDist | None = None) -> Path:
    """Build a complete backends folder from the wheel: Python backend + stub, and the deepplan backend.

    This is what :mod:`deepplan_backend.serve` runs before every start (it is cheap: a few MiB copied).

    Returns:
        ``backends_dir``.
    """
    backends_dir = Path(backends_dir)
    check_backend_sources(source_dir)  # fail before copying anything
    install_python_backend(backends_dir, dist=dist)
    install_backend(backends_dir, source_dir=source_dir)
    return backends_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: install the deepplan backend (and optionally the wheel's Python backend)."""
    parser = argparse.ArgumentParser(
        prog="python3 -m deepplan_backend.install",
        description=f"Install the {BACKEND_NAME!r} Python-based Triton backend ({', '.join(BACKEND_FILES)}).",
    )
    parser.add_argument(
        "--backends-dir",
        type=Path,
        required=True,
        help="Triton's --backend-directory, e.g. /opt/tritonserver/backends",
    )
    parser.add_argument(
        "--python-backend-from-wheel",
        action="store_true",
        help="also copy the Python backend and the stub for this Python from the nvidia-pytriton wheel "
        "(not needed in the NGC tritonserver image, which ships them)",
    )
    parser.add_argument("--source-dir", type=Path, default=SOURCE_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        check_backend_sources(args.source_dir)  # fail before copying anything
        if args.python_backend_from_wheel:
            install_python_backend(args.backends_dir)
        check_python_backend(args.backends_dir)
        target = install_backend(args.backends_dir, source_dir=args.source_dir)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"installed the {BACKEND_NAME!r} backend in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
