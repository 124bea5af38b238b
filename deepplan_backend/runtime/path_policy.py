"""Which folders a deepplan model's config may point at: weights, plans and residency state stay inside the roots.

A model's ``config.pbtxt`` is written by whoever may put a model into the repository (or override a config
through the model-repository API), so its paths are untrusted input. A model may only use paths inside:

- its own folder and its model repository (the folder holding the model folders),
- the server's plan repository (``$DEEPPLAN_PLAN_REPOSITORY`` or the default cache) and residency folder,
- every folder in ``$DEEPPLAN_ALLOWED_ROOTS`` (absolute paths separated by ``os.pathsep``, i.e. ``:``).

Symlinks: every path *and every root* is resolved with `Path.resolve` before it is compared
(`Path.is_relative_to` on the resolved paths), so a symlink anywhere in a path is followed first. A symlink that
stays inside the roots is fine (a repository reached through ``/tmp -> /private/tmp``, a Hugging Face cache whose
snapshot files link to ``../../blobs``); one that leads out is refused, and the error says the path went
through a symlink. `check_tree` applies the same rule to every entry of a checkpoint folder, so a
``model.safetensors -> /home/user/secret`` link inside an allowed folder is refused too. Callers use the
*resolved* path from then on, so swapping a symlink after the check does not redirect the load.

Not covered (by design, see docs/SECURITY.md): hard links and bind mounts (a path cannot tell them apart from
ordinary files), and someone who can already write inside the roots (they control the models anyway).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ALLOWED_ROOTS_ENV = "DEEPPLAN_ALLOWED_ROOTS"
MAX_TREE_ENTRIES = 100_000
"""Entries `check_tree` looks at before refusing a folder (a checkpoint has a handful of files)."""


class PathPolicyError(ValueError):
    """A configured path is outside the allowed roots, missing, or cannot be resolved; the message says which."""


def _resolve(path: Path, strict: bool) -> Path:
    try:
        return path.resolve(strict=strict)
    except FileNotFoundError:
        raise
    except (OSError, RuntimeError) as exc:  # symlink loop (RuntimeError before 3.13), permission, name too long
        raise PathPolicyError(f"{path}: cannot be resolved ({type(exc).__name__}: {exc})") from None


def env_roots(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The folders of ``$DEEPPLAN_ALLOWED_ROOTS``; a relative entry is an error (relative to what?)."""
    text = (os.environ if env is None else env).get(ALLOWED_ROOTS_ENV, "")
    roots = []
    for part in text.split(os.pathsep):
        part = part.strip()
        if not part:
            continue
        if not os.path.isabs(part):
            raise PathPolicyError(f"{ALLOWED_ROOTS_ENV}: {part!r} is not an absolute path")
        roots.append(Path(part))
    return tuple(roots)


@dataclass(frozen=True)
class PathPolicy:
    """A set of resolved root folders; `check` refuses any path that does not resolve inside one of them."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, roots: Iterable[str | os.PathLike[str]]) -> PathPolicy:
        """A policy for these roots (resolved now; they need not exist yet)."""
        resolved: list[Path] = []
        for root in roots:
            r = _resolve(Path(root).absolute(), strict=False)
            if r not in resolved:
                resolved.append(r)
        return cls(tuple(resolved))

    @classmethod
    def for_model(
        cls,
        model_dir: str | os.PathLike[str],
        *server_dirs: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None = None,
    ) -> PathPolicy:
        """Roots for one Triton model: its folder, its model repository, `server_dirs` and the env allow-list.

        `server_dirs` are the folders the operator configured for the whole server (plan repository, residency
        folder); ``None`` entries are skipped.
        """
        model_dir = Path(model_dir)
        dirs = [model_dir, model_dir.parent, *(d for d in server_dirs if d is not None), *env_roots(env)]
        return cls.of(dirs)

    def allows(self, resolved: Path) -> bool:
        """Whether an already resolved path lies inside a root."""
        return any(resolved.is_relative_to(root) for root in self.roots)

    def check(
        self,
        path: str | os.PathLike[str],
        what: str,
        *,
        base: str | os.PathLike[str] | None = None,
        must_exist: bool = True,
    ) -> Path:
        """`path` (relative to `base`) resolved, if it lies inside the roots; else PathPolicyError naming `what`.

        With `must_exist`, a missing path is an error too (checked after the roots, so a path outside them is
        always reported as such). Use the returned path, not the original, from then on.
        """
        raw = Path(path)
        if not raw.is_absolute():
            if base is None:
                raise PathPolicyError(f"{what}: {str(path)!r} is relative and there is no folder to resolve it in")
            raw = Path(base) / raw
        resolved = _resolve(raw, strict=False)
        if not self.allows(resolved):
            lexical = Path(os.path.normpath(raw))
            how = " through a symlink" if self.allows(lexical) else ""  # lexically inside, really outside
            raise PathPolicyError(
                f"{what}: {str(path)!r} resolves{how} to {resolved}, outside the allowed roots "
                f"({', '.join(str(r) for r in self.roots)}); a model may only read and write inside its model "
                f"repository, the server's plan repository and the folders listed in {ALLOWED_ROOTS_ENV}"
            )
        if must_exist:
            try:
                resolved = _resolve(raw, strict=True)
            except FileNotFoundError:
                raise PathPolicyError(f"{what}: {str(path)!r} does not exist ({resolved})") from None
        return resolved

    def check_tree(self, folder: Path, what: str, *, max_entries: int = MAX_TREE_ENTRIES) -> None:
        """Refuse a folder holding a symlink (at any depth) that resolves outside the roots.

        Walks without following symlinked folders (their target is checked instead), and gives up with an error
        after `max_entries` entries rather than walking an unbounded tree.
        """
        seen = 0
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            for name in (*dirnames, *filenames):
                seen += 1
                if seen > max_entries:
                    raise PathPolicyError(f"{what}: {folder} holds more than {max_entries} entries")
                entry = Path(dirpath) / name
                if entry.is_symlink():
                    self.check(entry, f"{what} (entry {entry.relative_to(folder)})", must_exist=False)


_PRIVATE_MODES = {0o022: "that others cannot write", 0o077: "that only its owner can use (mode 0700)"}


def ensure_private_folder(folder: Path, forbidden_mode: int) -> None:
    """Create `folder` (mode 0700, parents too) if missing; PermissionError unless it is private enough.

    Private enough: a real folder (not a link) of this user whose mode has none of the `forbidden_mode` bits
    (0o022: others cannot write; 0o077: nor read or enter). Weights images and engine-host sockets live in such
    folders: whoever can write there could hand a server's processes other weights, or stand in for its host.
    """
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.lstat()
    except OSError as exc:
        raise PermissionError(f"cannot use {folder}: {exc}") from exc
    link_or_file = stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode)
    if link_or_file or st.st_uid != os.getuid() or st.st_mode & forbidden_mode:
        what = _PRIVATE_MODES.get(forbidden_mode, f"with none of the mode bits {forbidden_mode:o}")
        raise PermissionError(f"{folder} must be a folder owned by uid {os.getuid()} {what}")
