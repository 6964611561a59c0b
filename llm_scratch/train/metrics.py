"""A token-weighted mean loss whose update never waits for the device."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class TokenWeightedMean(Metric):
    """The mean of per-batch mean losses, each weighted by its number of tokens.

    Unlike torchmetrics' ``MeanMetric``, whose NaN check (``nan_strategy="warn"``) reads a device
    value back on every update, ``update`` only adds to two device tensors, so a training or
    validation step costs no host sync. A NaN or inf loss makes the mean NaN or inf (the
    finite-loss guard reports it). The sums are reduced across processes at ``compute``.

    The sums are part of the module's ``state_dict``, so a checkpoint saved mid-epoch carries the
    epoch's sums so far and a resumed run's epoch mean covers the whole epoch. A checkpoint saved
    before they were (no ``<name>.total`` keys) still loads: the sums then start at zero.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum", persistent=True)
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum", persistent=True)

    def update(self, loss: torch.Tensor, n_tokens: int) -> None:
        """Add a batch's mean ``loss`` over ``n_tokens`` tokens."""
        self.total += loss.detach() * n_tokens
        self.count += n_tokens

    def compute(self) -> torch.Tensor:
        return self.total / self.count

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # checkpoints are read onto the CPU: keep the sums where the updates' losses are
        self.total = self.total.to(self.device)
        self.count = self.count.to(self.device)
