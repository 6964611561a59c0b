"""AdamW with decoupled weight decay on 2-D weights, and the learning-rate schedules."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llm_scratch.constraints import check, enforce
from llm_scratch.errors import UserError

if TYPE_CHECKING:  # torch is imported where an optimizer is built: composing a config needs none
    import torch

SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimizerConfig:
    """AdamW settings. ``fused=None`` picks torch's fused kernel where it exists for the device.

    Each range is declared on its field (llm_scratch/constraints.py): checked here and, before
    a run starts, by llm_scratch/train/validate.py."""

    lr: float = field(default=4e-4, metadata=check(gt=0))
    weight_decay: float = field(default=0.1, metadata=check(ge=0))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = field(default=1e-8, metadata=check(gt=0, why="added to the denominator"))
    fused: bool | None = None

    def __post_init__(self) -> None:
        enforce(self, "optimizer")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"optimizer.betas={list(self.betas)} must be two numbers in [0, 1)")


# The warm-up when neither scheduler.warmup_steps nor scheduler.warmup_fraction is set.
DEFAULT_WARMUP_FRACTION = 0.05


@dataclass
class SchedulerConfig:
    """Learning-rate schedule, stepped once per optimizer step.

    ``name``: ``cosine`` (linear warm-up, then cosine decay to ``min_lr``), ``linear`` (warm-up,
    then linear decay to ``min_lr``) or ``constant`` (warm-up, then flat). The warm-up is either
    ``warmup_steps`` optimizer steps or ``warmup_fraction`` of the total steps: set one of them
    (the other stays ``None``, or 0 which adds no warm-up); with neither set it is
    ``DEFAULT_WARMUP_FRACTION`` of the total. ``total_steps=None`` uses the Trainer's estimate of
    the optimizer steps of the whole run, which a continued run recomputes from its own
    ``max_epochs``/``max_steps`` (so raising them re-stretches the decay); a number pins it.
    """

    name: str = field(default="cosine", metadata=check(choices=SCHEDULES))
    warmup_steps: int | None = field(default=None, metadata=check(ge=0))
    warmup_fraction: float | None = field(default=None, metadata=check(ge=0, lt=1))
    min_lr: float = field(default=0.0, metadata=check(ge=0))
    total_steps: int | None = field(default=None, metadata=check(ge=1, why="null: the run's"))

    def __post_init__(self) -> None:
        enforce(self, "scheduler")
        # 0 in one key with a warm-up in the other is not a conflict: 0 adds no warm-up (the
        # norm ablation sweeps the fraction with warmup_steps=0 over a base that sets steps).
        if (self.warmup_steps or 0) > 0 and (self.warmup_fraction or 0) > 0:
            raise UserError(
                f"scheduler.warmup_steps={self.warmup_steps} and scheduler.warmup_fraction="
                f"{self.warmup_fraction} both set a warm-up: set only one (the other to null)."
            )

    def warmup(self, total_steps: int) -> int:
        """The number of warm-up steps in a schedule of ``total_steps`` optimizer steps."""
        if self.warmup_steps:
            return self.warmup_steps
        if self.warmup_steps is None and self.warmup_fraction is None:
            return int(DEFAULT_WARMUP_FRACTION * total_steps)
        return int((self.warmup_fraction or 0.0) * total_steps)


def build_adamw(
    param_groups: list[dict], cfg: OptimizerConfig, device: torch.device, clips_mixed: bool = False
):
    """AdamW; ``clips_mixed``: gradients are clipped under mixed precision, where Lightning
    refuses a fused optimizer (it unscales gradients inside its step), so ``fused=None`` means
    unfused there."""
    import torch

    fused = cfg.fused
    if fused is None:
        # The fused kernel is one launch for all parameters instead of a loop of small ones.
        supported = "fused" in inspect.signature(torch.optim.AdamW).parameters
        fused = supported and device.type in ("cuda", "cpu", "mps", "xpu") and not clips_mixed
    # Unfused, the multi-tensor (foreach) kernels, which torch uses by default only on GPUs: on
    # a CPU its default is a Python loop over the parameters.
    return torch.optim.AdamW(
        param_groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=bool(fused),
        foreach=None if fused else True,
    )


def lr_multiplier(step: int, cfg: SchedulerConfig, total_steps: int, base_lr: float) -> float:
    """The factor on ``base_lr`` at optimizer step ``step`` (0-based)."""
    warmup = cfg.warmup(total_steps)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    floor = min(cfg.min_lr / base_lr, 1.0)
    decay_steps = max(total_steps - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    shape = 1.0 - progress if cfg.name == "linear" else cosine
    return floor + (1.0 - floor) * shape
