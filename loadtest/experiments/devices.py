"""The GPUs an experiment spreads its instances over, and which of them each instance uses."""

from __future__ import annotations

from dataclasses import dataclass

from .engines import ENGINES


@dataclass(frozen=True)
class Devices:
    """GPUs the instances are spread over (empty: CPU), and what the rows report."""

    gpu_ids: tuple[int, ...]
    gpu_name: str
    all_gpus: bool  # every visible GPU is used: PT may use ``devices auto``

    @property
    def where(self) -> str:
        """What the drivers' lines and titles say: ``4 x NVIDIA H200`` or ``CPU``."""
        return f"{len(self.gpu_ids)} x {self.gpu_name}" if self.gpu_ids else "CPU"


def resolve_devices(spec: str) -> Devices:
    """``auto``: every visible GPU (CPU when none); ``cpu``; or GPU ids ``0,1,2``."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "cpu" or (spec == "auto" and count == 0):
        return Devices((), "cpu", False)
    if spec == "auto":
        ids: tuple[int, ...] = tuple(range(count))
    else:
        try:
            ids = tuple(int(x) for x in spec.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"--devices {spec!r}: give auto, cpu or GPU ids like 0,1,2") from None
        bad = [i for i in ids if not 0 <= i < count]
        if not ids or bad:
            raise ValueError(f"--devices {spec!r}: {count} GPU(s) visible, ids {bad or 'missing'}")
    return Devices(ids, torch.cuda.get_device_name(ids[0]), len(ids) == count)


def target_gpu(i: int, dev: Devices) -> int:
    """The GPU instance i is served on: round-robin over ``dev.gpu_ids`` (which must not be empty)."""
    return dev.gpu_ids[i % len(dev.gpu_ids)]


def device_param(variant: str, i: int, dev: Devices) -> str:
    """The backend's ``devices`` parameter of instance i: its target GPU, or target + peers for PT."""
    if not dev.gpu_ids:
        return "auto"  # CPU: the backend serves on the CPU
    target = target_gpu(i, dev)
    if not ENGINES[variant][1]:
        return str(target)
    if dev.all_gpus:
        return "auto"  # target + every GPU it has peer access to
    return ",".join(str(g) for g in [target, *[g for g in dev.gpu_ids if g != target]])
