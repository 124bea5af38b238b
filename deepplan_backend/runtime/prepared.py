"""A model made ready for cold starts: built (or loaded), traced into a layer table, packed into host memory.

Identical weights are packed once per process: several served instances of the same (source, dtype, seed)
share one pinned host copy, which is what lets a server hold hundreds of instances of one model. With a weights
image (`weights_image`), they are packed once per server: the other processes map the first one's copy.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import torch

from .answer import laps_text
from .host_store import HostStore
from .layers import LayerTable, build_layer_table
from .plan import PlanKey
from .weights_image import ImageError, ImageKey, WeightsImage, ensure_private_folder, remove_image
from .zoo import ZooModel, load_model, source_identity

TRACE_SEQ_LEN = 8
"""Sequence length of the forward that observes layer order: order does not depend on length, cost does."""


@dataclass
class PreparedModel:
    """The model module bound to its packed host store, and the layer table describing the packing."""

    model: ZooModel
    table: LayerTable
    store: HostStore
    prepare_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    """Where `prepare` spent its time: build (with the imports it triggers), table, pack (pinning included); or,
    from an image: map, pin, skeleton, bind."""
    image: WeightsImage | None = None
    """The weights image the host store lives in, if any (released with the last user of these weights)."""
    mapped: bool = False
    """The host store is an image another process prepared (this one only mapped it)."""

    @property
    def origin(self) -> str:
        """How the host store came to be, for the log: prepared here, or prepared in / mapped from an image."""
        if self.image is None:
            return "prepared"
        return f"{'mapped from' if self.mapped else 'prepared in'} image {self.image.path.name}"

    @property
    def fingerprint(self) -> str:
        """Structure digest a plan must match (see `LayerTable.fingerprint`)."""
        return self.table.fingerprint(self.model.family)

    def plan_key(self, batch_size: int, seq_len: int | None, gpu_name: str, graphs: bool = False) -> PlanKey:
        """The plan repository key for serving this model in the given shape on the given GPU, eager or as graphs."""
        seq = 1 if self.model.family == "resnet" else (self.model.default_seq_len if seq_len is None else seq_len)
        return PlanKey(self.model.name, batch_size, seq, self.model.dtype, gpu_name, "graphs" if graphs else "eager")


def prepare(name_or_path: str, dtype: str = "float32", seed: int = 0, pin: bool | None = None) -> PreparedModel:
    """Build the model, observe its execution order, and pack its tensors into (pinned) host memory."""
    model, table, laps = _build_and_trace(name_or_path, dtype, seed)
    packing = time.perf_counter()
    store = HostStore.pack(model.module, table, pin=pin)
    laps["pack"] = (time.perf_counter() - packing) * 1e3
    return PreparedModel(model, table, store, laps)


def _build_and_trace(name_or_path: str, dtype: str, seed: int) -> tuple[ZooModel, LayerTable, dict[str, float]]:
    """The built model and its layer table, with the ms each took (``build``, ``table``)."""
    start = time.perf_counter()
    model = load_model(name_or_path, dtype=dtype, seed=seed)
    built = time.perf_counter()
    trace = model.example_inputs(1, min(TRACE_SEQ_LEN, model.max_seq_len), seed=seed)
    table = build_layer_table(model.module, trace)
    return model, table, {"build": (built - start) * 1e3, "table": (time.perf_counter() - built) * 1e3}


def prepare_imaged(folder: Path, name_or_path: str, dtype: str = "float32", seed: int = 0) -> PreparedModel:
    """Like `prepare`, with the host store in a weights image in `folder`: mapped if one exists, else built into one.

    Mapping builds only the module's skeleton (no weights) and binds it to the image. An unusable image is built
    again; one that cannot be made (shared memory full) falls back to a private copy, with a message.
    """
    key = ImageKey(source_identity(name_or_path), dtype, seed)
    start = time.perf_counter()
    try:
        ensure_private_folder(folder)
    except ImageError as exc:
        _own_copy(f"no weights images ({exc})")
        return prepare(name_or_path, dtype, seed)
    mapped = _open_image(folder, key)
    if mapped is None:
        with WeightsImage.building(folder, key):
            mapped = _open_image(folder, key)  # built by another process while we waited
            if mapped is None:
                return _build_image(folder, key, name_or_path, dtype, seed)
    opened = time.perf_counter()
    try:
        mapped.pin()
        pinned = time.perf_counter()
        model = load_model(name_or_path, dtype=dtype, seed=seed, skeleton=True)
        built = time.perf_counter()
        store = HostStore(mapped.table, mapped.buffer, pinned=mapped.pinned)
        store.bind_host(model.module)
        _check_bound(model.module)
    except (ImageError, OSError) as exc:
        mapped.release()
        _own_copy(f"weights image of {name_or_path} not used ({exc})")
        return prepare(name_or_path, dtype, seed)
    except BaseException:
        mapped.release()
        raise
    laps = {
        "map": opened - start,
        "pin": pinned - opened,
        "skeleton": built - pinned,
        "bind": time.perf_counter() - built,
    }
    laps_ms = {k: v * 1e3 for k, v in laps.items()}
    return PreparedModel(model, mapped.table, store, laps_ms, image=mapped, mapped=True)


def _open_image(folder: Path, key: ImageKey) -> WeightsImage | None:
    """The mapped image, or None; an unusable one is deleted (under the build lock) so that it is built again."""
    try:
        return WeightsImage.open(folder, key)
    except ImageError as exc:
        print(f"deepplan: weights image {key.digest} unusable ({exc}); building it again", flush=True)
        with WeightsImage.building(folder, key):
            remove_image(folder, key)
        return None


def _build_image(folder: Path, key: ImageKey, name_or_path: str, dtype: str, seed: int) -> PreparedModel:
    """Build the model and pack it into a new image (holding the build lock), or into a private buffer."""
    model, table, laps = _build_and_trace(name_or_path, dtype, seed)
    packing = time.perf_counter()
    packed = _pack_into_new_image(folder, key, model, table)
    store, image = packed if packed is not None else (HostStore.pack(model.module, table), None)
    laps["pack"] = (time.perf_counter() - packing) * 1e3
    return PreparedModel(model, table, store, laps, image=image)


def _pack_into_new_image(
    folder: Path, key: ImageKey, model: ZooModel, table: LayerTable
) -> tuple[HostStore, WeightsImage] | None:
    """Pack `model` into a new, published image; None (with a message) where shared memory or pinning says no."""
    try:
        image = WeightsImage.create(folder, key, table)
    except OSError as exc:  # e.g. /dev/shm too small (a container's default is 64 MiB)
        _own_copy(f"no weights image for {model.name} ({exc})")
        return None
    try:
        image.pin()
        store = HostStore.pack_into(model.module, table, image.buffer, pinned=image.pinned)
        image.publish(key)
    except OSError as exc:  # page-locking refused (memlock limit, ...): the module still holds its own tensors
        image.discard()
        _own_copy(f"no weights image for {model.name} ({exc})")
        return None
    except BaseException:
        image.discard()
        raise
    return store, image


def _own_copy(reason: str) -> None:
    """Say why this process packs its own host copy instead of using a weights image."""
    print(f"deepplan: {reason}; this process packs its own copy", flush=True)


def _check_bound(module: torch.nn.Module) -> None:
    """Every tensor of a skeleton bound to the image: a meta tensor left means the image misses part of the model."""
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if tensor.is_meta:
            raise ImageError(f"the image holds no bytes for {name}")


@dataclass
class _Shared:
    prepared: PreparedModel
    users: int = 0


_shared_lock = threading.Lock()
_shared_stores: dict[tuple[str, str, int], _Shared] = {}


def prepare_shared(
    name_or_path: str, dtype: str = "float32", seed: int = 0, image_folder: Path | None = None
) -> PreparedModel:
    """Like `prepare`, but instances with the same weights share one packed host store (give it back: `release_shared`).

    Each call gets its own module object (an engine rebinds its module's tensors to its own device bytes), but
    the clone's tensors are the shared host views, so N instances cost one host copy of the weights. With
    `image_folder`, that copy is a weights image that the server's other processes map too (`prepare_imaged`).
    """
    key = (name_or_path, dtype, seed)
    with _shared_lock:
        entry = _shared_stores.get(key)
        if entry is None:
            if image_folder is None:
                base = prepare(name_or_path, dtype, seed)
            else:
                base = prepare_imaged(image_folder, name_or_path, dtype, seed)
            entry = _shared_stores[key] = _Shared(base)
            laps = laps_text(base.prepare_ms)
            print(f"deepplan: host weights of {name_or_path} ({dtype}) {base.origin}: {laps} ms", flush=True)
        entry.users += 1
    base = entry.prepared
    model = dataclasses.replace(base.model, module=clone_sharing_tensors(base.model.module))
    return PreparedModel(model, base.table, base.store, image=base.image, mapped=base.mapped)


_CONTAINERS = (dict, collections.OrderedDict, set, list)
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def clone_sharing_tensors(root: ModuleT) -> ModuleT:
    """A copy of `root`'s module tree whose modules are new objects and whose tensors are the same objects.

    Each served instance needs modules of its own (its engine rebinds their parameters to its own device bytes)
    but not tensors of its own. `copy.deepcopy` with every tensor in its memo did that in 11 ms for BERT-Base on
    a 2-core CPU host (19-22 ms per registration on an H100 host under load), walking every attribute of every
    module; after a host's death each model's registration paid it in turn. Here each module gets a copy of its
    attribute dict, with its containers (parameters, buffers, children, hooks) copied one level deep, so that
    rebinding a clone's tensor leaves the others alone: 0.96 ms, 2-3 ms per registration (`results/README.md`).
    Everything else (configs, plain attributes) is shared: serving only reads it. A module reachable twice stays
    one module in the copy.
    """
    return cast(ModuleT, _clone_module(root, {}))


def _clone_module(module: torch.nn.Module, clones: dict[int, torch.nn.Module]) -> torch.nn.Module:
    """`clone_sharing_tensors` of one module, given the clones made so far (by the original's id).

    A function of the module, not a closure over `clones`: a recursive closure is a reference cycle, which kept
    every clone alive until a collection (and forever once `gc_pauses` froze it; `tests/unit/test_gc_pauses.py`).
    """
    found = clones.get(id(module))
    if found is not None:
        return found
    copied = module.__class__.__new__(module.__class__)
    clones[id(module)] = copied
    attrs = {name: value.copy() if type(value) in _CONTAINERS else value for name, value in module.__dict__.items()}
    attrs["_modules"] = {
        name: None if child is None else _clone_module(child, clones)
        for name, child in module.__dict__["_modules"].items()
    }
    copied.__dict__.update(attrs)
    return copied


def release_shared(name_or_path: str, dtype: str = "float32", seed: int = 0) -> None:
    """One user of `prepare_shared`'s weights is gone; the last one releases them (and their image, if any)."""
    key = (name_or_path, dtype, seed)
    with _shared_lock:
        entry = _shared_stores.get(key)
        if entry is None:
            return
        entry.users -= 1
        if entry.users > 0:
            return
        del _shared_stores[key]
    if entry.prepared.image is not None:
        entry.prepared.image.release()


def gpu_name(device: torch.device) -> str:
    """The name plans are keyed by: the GPU's marketing name, or `cpu`."""
    if device.type != "cuda":
        return "cpu"
    return torch.cuda.get_device_name(device)
