"""Out-of-memory errors, as torch raises them on each device."""

from __future__ import annotations

import torch


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text  # DefaultCPUAllocator
        or "out of memory" in text.lower()  # CUDA, MPS, XPU
    )
