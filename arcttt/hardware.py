"""The machine: which CUDA GPUs there are (and whether they do bf16 natively), which of them this
process may use, and the run preset that fits them. Imports torch only inside the functions, and
nothing from arcttt, so that the config, the pipeline and the notebook can all ask."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]
    memory_gib: float

    @property
    def bf16(self) -> bool:
        # Native bf16 starts with Ampere (8.0). torch.cuda.is_bf16_supported() also counts emulation,
        # which says yes on a T4 (7.5) where bf16 is slow, so the capability decides.
        return self.capability >= (8, 0)


def detect_gpus() -> list[Gpu]:
    """The CUDA GPUs torch sees (none when torch or CUDA is missing)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(Gpu(i, p.name, (p.major, p.minor), p.total_memory / 2**30))
    return gpus


def choose_preset(gpus: Sequence[Gpu] | None = None) -> str:
    """The run preset for these GPUs (detected when None): no CUDA GPU -> ``cpu-smoke``; any GPU
    without native bf16 (T4, compute capability < 8.0) -> ``kaggle-t4x2``; else ``kaggle-l4x4``.
    The kaggle presets are per GPU (one worker each), so 1 or 2 bf16 GPUs also get ``kaggle-l4x4``."""
    gpus = detect_gpus() if gpus is None else list(gpus)
    if not gpus:
        return "cpu-smoke"
    if not all(g.bf16 for g in gpus):
        return "kaggle-t4x2"
    return "kaggle-l4x4"


def visible_gpus() -> list[int]:
    """Indices of the GPUs this process may use. ``device_count`` asks NVML and creates no CUDA
    context, so the main process leaves every GPU to its worker."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except ImportError:
        return []
