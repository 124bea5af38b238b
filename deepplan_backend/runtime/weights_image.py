"""A model's packed host weights as an image file in shared memory: built once per server, mapped by every process.

Each engine host (one per GPU) and each ``process: instance`` stub used to build and pack its own host copy of a
model. An image in the server's residency folder (``/dev/shm``) holds the packed bytes and the layer table; a
process that needs the same weights maps it instead: one host copy per server, not one per process, and an engine
host that replaces a dead one maps its weights instead of building them again (0.9 s for BERT-Base's seeded weights
on the H100 host, session 13; longer for a checkpoint read from disk).

Layout: a header (magic, then JSON: format, key, layer table), padded to a page, then the packed bytes.

Lifecycle:
- Built under an exclusive lock on ``<digest>.lock``, written under a temporary name and renamed into place: a
  reader never sees a partial image, and two processes never build the same image at once.
- Every process that maps an image holds a shared ``flock`` on it. The last one to release it deletes it. A process
  that dies holds nothing: its image stays for its replacement, and the server's stop deletes the residency folder
  with everything in it.
- An image that does not match what its reader expects (format, key, size) is deleted and built again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from . import path_policy
from .layers import Layer, LayerTable, SharedEntry, TensorEntry
from .pinned_memory import cuda_register, cuda_unregister

IMAGES_ENV = "DEEPPLAN_WEIGHT_IMAGES"
"""``0`` turns images off (every process packs its own host copy); by default they are used where the residency
folder is in shared memory (a folder on disk would write the weights to disk)."""
FORMAT = 1
"""Bumped whenever the header or the packing changes: an image of another format is built again."""
MAGIC = b"DPWIMG\x00\x01"
PAGE = mmap.PAGESIZE
IMAGE_SUFFIX = ".img"


class ImageError(RuntimeError):
    """An image that cannot be used: wrong magic, format, key or size."""


@dataclasses.dataclass(frozen=True)
class ImageKey:
    """What determines an image's bytes: the source, the dtype and the seed (and the library versions that build it)."""

    source: str
    dtype: str
    seed: int

    @property
    def digest(self) -> str:
        """The image's file stem: a digest of the key, this format and the versions of torch and transformers.

        The versions are in because seeded random weights depend on them; the format because the layout does.
        """
        import transformers

        text = json.dumps([FORMAT, self.source, self.dtype, self.seed, torch.__version__, transformers.__version__])
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def images_enabled(folder: Path) -> bool:
    """Whether images are used for this residency folder: not turned off, and the folder is in memory (tmpfs)."""
    if os.environ.get(IMAGES_ENV, "").strip() == "0":
        return False
    return _filesystem_type(folder) == "tmpfs"


def _filesystem_type(path: Path) -> str | None:
    """The type of the file system holding `path` (the longest mount point above it in /proc/self/mounts)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, kind = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def ensure_private_folder(folder: Path) -> None:
    """Create `folder` (0700) if missing; ImageError unless it is a real folder of this user that others cannot write.

    Whoever can write there could hand every process of the server other weights.
    """
    try:
        path_policy.ensure_private_folder(folder, 0o022)
    except PermissionError as exc:
        raise ImageError(str(exc)) from None


class WeightsImage:
    """One mapped image: its layer table and a uint8 tensor over its packed bytes (shared by every process mapping it).

    Holds a shared lock on the file for as long as it is open; `release` drops it and deletes the file if no
    other process holds one.
    """

    def __init__(self, path: Path, fd: int, table: LayerTable, data_offset: int) -> None:
        self.path = path
        self.table = table
        self._fd = fd
        # Populated now, at load: else every page of the weights faults in on its first read, inside a cold start.
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        self._map = mmap.mmap(fd, data_offset + max(table.total_bytes, 1), flags)
        # The tensor keeps the mapping alive: the map object cannot close while a buffer export exists.
        self.buffer = torch.frombuffer(
            self._map, dtype=torch.uint8, offset=data_offset, count=max(table.total_bytes, 1)
        )
        self._pinned_ptr: int | None = None  # the address `pin` registered, unregistered by `release`

    # ---- opening ----------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: Path, key: ImageKey) -> WeightsImage | None:
        """Map `key`'s image from `folder`, or None if there is none. Raises ImageError for an unusable one."""
        path = folder / f"{key.digest}{IMAGE_SUFFIX}"
        for _ in range(3):  # the file may be replaced between open and lock: then open the new one
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                if os.fstat(fd).st_ino != path.stat().st_ino:
                    os.close(fd)
                    continue
            except FileNotFoundError:  # deleted by its last user after our open
                os.close(fd)
                continue
            try:
                table, data_offset = _read_header(fd, key)
                return cls(path, fd, table, data_offset)
            except BaseException:
                os.close(fd)
                raise
        return None

    @classmethod
    @contextlib.contextmanager
    def building(cls, folder: Path, key: ImageKey) -> Iterator[None]:
        """Hold `key`'s build lock: one process builds (or deletes) an image while the others wait to map it."""
        fd = os.open(folder / f"{key.digest}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @classmethod
    def create(cls, folder: Path, key: ImageKey, table: LayerTable) -> WeightsImage:
        """A new image of `table`'s size under a temporary name (hold `building`); fill `buffer`, then `publish`.

        Raises OSError when shared memory cannot hold it (the space is reserved up front: writing to a full tmpfs
        through a mapping would kill the process with SIGBUS instead of raising).
        """
        header = _header(key, table)
        data_offset = _data_offset(len(header))
        size = data_offset + max(table.total_bytes, 1)
        tmp = folder / f"{key.digest}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            os.pwrite(fd, header, 0)
            fcntl.flock(fd, fcntl.LOCK_SH)
            return cls(tmp, fd, table, data_offset)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise

    def publish(self, key: ImageKey) -> None:
        """Move a filled image from its temporary name into place, where other processes find it."""
        final = self.path.with_name(f"{key.digest}{IMAGE_SUFFIX}")
        self._map.flush()
        os.replace(self.path, final)
        self.path = final

    # ---- pinning and release ----------------------------------------------------------------------------------

    def pin(self) -> None:
        """Page-lock the mapped bytes for the GPUs (async copies and direct host access read them in place).

        Registered portable (every GPU's copies, for PT) and mapped (a device pointer for DHA, which under UVA is
        the host pointer itself).
        """
        if self._pinned_ptr is not None or not torch.cuda.is_available():
            return
        ptr, size = self.buffer.data_ptr(), self.buffer.numel()
        try:
            cuda_register(ptr, size)
        except OSError as exc:
            raise OSError(f"{exc} ({self.path.name})") from None
        self._pinned_ptr = ptr

    @property
    def pinned(self) -> bool:
        """Whether `pin` page-locked the bytes."""
        return self._pinned_ptr is not None

    def release(self) -> None:
        """Unpin, unlock, and delete the image if no other process holds it (this process's last user is gone).

        The mapping itself goes when the last tensor over it does.
        """
        if self._fd < 0:
            return
        if self._pinned_ptr is not None:
            cuda_unregister(self._pinned_ptr)
            self._pinned_ptr = None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process maps it
            pass
        else:
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(self._fd).st_ino == self.path.stat().st_ino:
                    self.path.unlink()
        finally:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Delete an image that could not be filled (hold `building`)."""
        self.release()
        self.path.unlink(missing_ok=True)


def remove_image(folder: Path, key: ImageKey) -> None:
    """Delete `key`'s image (an unusable one: hold `building`); processes mapping it keep their copy."""
    (folder / f"{key.digest}{IMAGE_SUFFIX}").unlink(missing_ok=True)


# ---- header -----------------------------------------------------------------------------------------------------


def _header(key: ImageKey, table: LayerTable) -> bytes:
    body = json.dumps({"format": FORMAT, "key": key.digest, "table": _table_to_json(table)}).encode()
    return MAGIC + len(body).to_bytes(8, "little") + body


def _data_offset(header_bytes: int) -> int:
    """Where the packed bytes start: after the header, on a page boundary (what `mmap` maps and tensors align to)."""
    return -(-header_bytes // PAGE) * PAGE


def _read_header(fd: int, key: ImageKey) -> tuple[LayerTable, int]:
    size = os.fstat(fd).st_size
    start = os.pread(fd, len(MAGIC) + 8, 0)
    if len(start) < len(MAGIC) + 8 or start[: len(MAGIC)] != MAGIC:
        raise ImageError("not a weights image (bad magic)")
    length = int.from_bytes(start[len(MAGIC) :], "little")
    if length > size:
        raise ImageError(f"header of {length} bytes in a file of {size}")
    try:
        body = json.loads(os.pread(fd, length, len(MAGIC) + 8))
        if body.get("format") != FORMAT or body.get("key") != key.digest:
            raise ImageError(f"format {body.get('format')} / key {body.get('key')}: not this model's image")
        table = _table_from_json(body["table"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"unreadable header: {type(exc).__name__}: {exc}") from exc
    data_offset = _data_offset(len(MAGIC) + 8 + length)
    if size < data_offset + table.total_bytes:
        raise ImageError(f"truncated: {size} bytes, the table needs {data_offset + table.total_bytes}")
    return table, data_offset


def _table_to_json(table: LayerTable) -> dict[str, object]:
    def tensor(t: TensorEntry) -> list[object]:
        return [t.attr, t.is_parameter, list(t.shape), str(t.dtype).removeprefix("torch."), t.offset, t.nbytes]

    def shared(s: SharedEntry) -> list[object]:
        return [s.attr, s.is_parameter, s.owner_layer, s.owner_attr]

    layers = [
        [layer.index, layer.name, [tensor(t) for t in layer.tensors], [shared(s) for s in layer.shared], layer.nbytes,
         layer.observed]
        for layer in table
    ]  # fmt: skip
    return {"layers": layers, "offsets": list(table.offsets), "total_bytes": table.total_bytes}


def _table_from_json(data: dict[str, object]) -> LayerTable:
    def dtype(name: str) -> torch.dtype:
        value = getattr(torch, name, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {name!r}")
        return value

    layers = tuple(
        Layer(
            int(index),
            str(name),
            tuple(TensorEntry(str(a), bool(p), tuple(int(d) for d in shape), dtype(dt), int(o), int(n))
                  for a, p, shape, dt, o, n in tensors),
            tuple(SharedEntry(str(a), bool(p), int(owner), str(attr)) for a, p, owner, attr in shared),
            int(nbytes),
            bool(observed),
        )
        for index, name, tensors, shared, nbytes, observed in data["layers"]  # type: ignore[attr-defined]
    )  # fmt: skip
    offsets = tuple(int(o) for o in data["offsets"])  # type: ignore[attr-defined]
    return LayerTable(layers, offsets, int(data["total_bytes"]))  # type: ignore[call-overload]
