"""Validation and epoch figures whose updates never wait for the device: a token-weighted
mean loss, and bits per byte."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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

    The figure does not depend on the tokenizer: a character model and a BPE model of the same
    text compare directly. ``update`` adds a batch's sums (see :func:`bpb_sums`) on the device;
    the sums, not per-batch ratios, are reduced across processes at ``compute``. Not saved in
    checkpoints (a validation never spans one).
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

    def update(self, nats: torch.Tensor, n_bytes: torch.Tensor) -> None:
        """Add a batch's summed cross-entropy ``nats`` over its ``n_bytes`` bytes."""
        self.nats += nats.detach().float()
        self.bytes += n_bytes

    def compute(self) -> torch.Tensor:
        return self.nats / (math.log(2) * self.bytes)


def bpb_sums(
    loss: torch.Tensor,
    n_targets: int,
    logits: torch.Tensor,
    targets: torch.Tensor,
    byte_lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(nats, bytes) of a batch for :class:`BitsPerByte`, as nanochat counts them: the targets'
    summed cross-entropy and their UTF-8 bytes (``byte_lengths`` per token id), leaving out
    masked targets (-100) and tokens of 0 bytes (special tokens such as ``<|endoftext|>``).

    The sum is ``loss`` (the mean over the ``n_targets`` targets) times ``n_targets``, less the
    cross-entropy of the special-token targets, computed for those rows alone: a second
    softmax over every position would cost as much as the loss itself. Finding them reads one
    value back from the device per batch."""
    targets = targets.reshape(-1)
    lengths = byte_lengths[targets.clamp(min=0)] * (targets >= 0)
    nats = loss.detach().float() * n_targets
    special = (lengths == 0) & (targets >= 0)
    if bool(special.any()):
        rows = special.nonzero().squeeze(1)
        picked = logits.detach().reshape(-1, logits.size(-1))[rows].float()
        nats = nats - F.cross_entropy(picked, targets[rows], reduction="sum")
    return nats, lengths.sum()
