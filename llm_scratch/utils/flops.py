"""The device peak FLOP/s that model FLOPs utilisation (MFU) divides by, where it is known."""

from __future__ import annotations

import torch


def precision_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a Lightning ``precision`` (``"bf16-mixed"``, ``"32-true"``, ...) that
    MFU is measured against: bfloat16 for the bf16 precisions, float32 for everything else."""
    return torch.bfloat16 if "bf16" in str(precision) else torch.float32


def known_peak_flops(device: torch.device | str, precision: str) -> float | None:
    """The data-sheet peak FLOP/s of ``device`` for ``precision``, from Lightning's table of known
    GPUs; ``None`` for a CPU or a GPU the table does not list (no vendor figure to divide by)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    # Imported here: Lightning is only needed where there is a GPU to look up.
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(device, precision_dtype(precision))
    return float(flops) if flops else None
