"""Validation and epoch figures whose updates never wait for the device: a token-weighted
mean loss, and bits per byte."""

from __future__ import annotations

import math

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


class BitsPerByte(Metric):
    """Bits per byte over a validation: the summed cross-entropy (nats) of the target tokens
    divided by ln 2 and by the UTF-8 bytes those targets stand for (nanochat's ``val/bpb``).

    Tokens of 0 bytes (special tokens such as ``<|endoftext|>``) and masked targets (-100) are
    left out of both sums, so the figure does not depend on the tokenizer: a character model
    and a BPE model of the same text compare directly. ``update`` only adds on the device; the
    sums are reduced across processes at ``compute``. Not saved in checkpoints (a validation
    never spans one).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    nats: torch.Tensor
    bytes: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nats", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("bytes", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(
        self, token_losses: torch.Tensor, targets: torch.Tensor, byte_lengths: torch.Tensor
    ) -> None:
        """Add a batch: ``token_losses`` (the cross-entropy of each target, any shape),
        ``targets`` (the same shape, -100 where masked) and the tokenizer's per-id
        ``byte_lengths``."""
        targets = targets.reshape(-1)
        lengths = byte_lengths[targets.clamp(min=0)] * (targets >= 0)
        counted = lengths > 0
        losses = token_losses.detach().reshape(-1).float()
        # where, not multiply: a masked target's loss may be anything (0, or not finite)
        self.nats += torch.where(counted, losses, torch.zeros_like(losses)).sum()
        self.bytes += lengths.sum()

    def compute(self) -> torch.Tensor:
        return self.nats / (math.log(2) * self.bytes)
