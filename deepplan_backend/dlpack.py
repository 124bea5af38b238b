"""NumPy arrays to and from DLPack capsules with ctypes: how the Triton front end exchanges tensors.

Why not the obvious ways (all seen failing with the ``nvidia-pytriton`` 0.7 stub):

- ``pb_utils.Tensor.as_numpy()`` / ``pb_utils.Tensor(name, array)``: the stub is built against NumPy 1's C ABI;
  with NumPy 2 installed, outputs reached clients empty.
- ``np.from_dlpack`` / passing a NumPy array to ``pb_utils.Tensor.from_dlpack``: the stub renames consumed
  capsules to the non-standard ``used_dlpack``; NumPy's capsule destructor then fails and the stub dies.
- torch's DLPack works, but importing torch costs every front end ~300 MB of host memory and seconds of
  start-up, paid by its first (cold) request.

So: input capsules are read in place and copied (the producer keeps ownership: the capsule is not renamed);
output capsules own a reference to their array, released by the DLPack deleter the stub calls.
CPU tensors only (``kDLCPU`` and pinned ``kDLCUDAHost``); the front ends never see device memory.
"""

from __future__ import annotations

import ctypes
import math
import threading
from typing import Any

import numpy as np

_KDL_CPU, _KDL_CUDA_HOST = 1, 3
_CODES = {0: "int", 1: "uint", 2: "float", 6: "bool"}  # kDLInt, kDLUInt, kDLFloat, kDLBool
_CODE_OF_KIND = {"i": 0, "u": 1, "f": 2, "b": 6}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_CAPSULE_NAME = b"dltensor"

_live: dict[int, tuple[Any, ...]] = {}  # managed-tensor address -> what must outlive the capsule's consumer
_live_lock = threading.Lock()


class DLPackError(ValueError):
    """A capsule this module cannot read (device memory, unknown dtype, non-contiguous)."""


def _dtype(dt: _DLDataType) -> np.dtype:
    kind = _CODES.get(dt.code)
    if kind is None or dt.lanes != 1:
        raise DLPackError(f"DLPack dtype code {dt.code} x{dt.lanes} is not supported")
    if kind == "bool":
        return np.dtype(np.bool_)
    return np.dtype(f"{kind}{dt.bits}")


def array_from_capsule(capsule: object) -> np.ndarray:
    """A copy of the CPU tensor a ``dltensor`` capsule points to (the capsule keeps its owner)."""
    address = _get_pointer(capsule, _CAPSULE_NAME)
    managed = _DLManagedTensor.from_address(address)
    t = managed.dl_tensor
    if t.device.device_type not in (_KDL_CPU, _KDL_CUDA_HOST):
        raise DLPackError(f"tensor on DLPack device type {t.device.device_type}; only CPU tensors are read here")
    dtype = _dtype(t.dtype)
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    if t.strides:
        expected = 1
        for i in reversed(range(t.ndim)):
            if shape[i] != 1 and int(t.strides[i]) != expected:
                raise DLPackError(f"non-contiguous tensor (strides {[t.strides[k] for k in range(t.ndim)]})")
            expected *= shape[i]
    nbytes = dtype.itemsize * math.prod(shape)
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    raw = (ctypes.c_char * nbytes).from_address(t.data + t.byte_offset)
    return np.frombuffer(memoryview(raw), dtype=dtype).reshape(shape).copy()


@_DELETER
def _release(address: int | None) -> None:
    with _live_lock:
        _live.pop(address or 0, None)


def capsule_from_array(array: np.ndarray) -> object:
    """A ``dltensor`` capsule for `array` (C-contiguous copy if needed), owned by whoever consumes it.

    The consumer calls the DLPack deleter when done, which drops our reference. A capsule never consumed keeps
    its array alive (it has no capsule destructor: the stub renames consumed capsules, so one could not tell).
    """
    a = np.ascontiguousarray(array)
    if a.dtype.kind not in _CODE_OF_KIND:
        raise DLPackError(f"dtype {a.dtype} cannot be exported")
    shape = (ctypes.c_int64 * max(1, a.ndim))(*a.shape)
    managed = _DLManagedTensor()
    managed.dl_tensor.data = a.ctypes.data if a.size else None
    managed.dl_tensor.device = _DLDevice(_KDL_CPU, 0)
    managed.dl_tensor.ndim = a.ndim
    managed.dl_tensor.dtype = _DLDataType(_CODE_OF_KIND[a.dtype.kind], a.dtype.itemsize * 8, 1)
    managed.dl_tensor.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
    managed.dl_tensor.strides = ctypes.POINTER(ctypes.c_int64)()  # NULL: compact row-major
    managed.dl_tensor.byte_offset = 0
    managed.manager_ctx = None
    managed.deleter = _release
    address = ctypes.addressof(managed)
    with _live_lock:
        _live[address] = (a, shape, managed)
    return _new_capsule(address, _CAPSULE_NAME, None)


def live_exports() -> int:
    """Capsules handed out and not released yet (for tests: the consumer called every deleter)."""
    with _live_lock:
        return len(_live)
