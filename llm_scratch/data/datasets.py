"""Next-token datasets over one shared 1-D token array, and a seeded epoch sampler.

Each item is sliced on demand from the shared array (numpy array, memmap or torch tensor), so
memory stays O(N) whatever the stride; nothing per window is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from llm_scratch.errors import UserError

TokenArray = np.ndarray | torch.Tensor


def _check_tokens(tokens: Any) -> TokenArray:
    if not isinstance(tokens, np.ndarray | torch.Tensor):
        tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {tuple(tokens.shape)}")
    return tokens


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}; set it to 1 or more.")
    return int(value)


def _check_length(n: int, context_length: int, what: str) -> None:
    if n < context_length + 1:
        raise UserError(
            f"The {what} has N={n} tokens, too few for context_length={context_length} (a window "
            f"needs context_length+1 = {context_length + 1}); use a smaller context_length or a "
            "longer corpus (or a smaller validation fraction)."
        )


def _window(tokens: TokenArray, start: int, context_length: int) -> tuple[torch.Tensor, ...]:
    chunk = tokens[start : start + context_length + 1]
    if isinstance(chunk, torch.Tensor):
        chunk = chunk.to(torch.int64, copy=True)
    else:
        chunk = torch.from_numpy(np.array(chunk, dtype=np.int64))
    return chunk[:-1], chunk[1:]


class SlidingWindowDataset(Dataset):
    """Windows at a fixed stride: item i is ``x = tokens[i*stride : i*stride + context_length]``
    and ``y`` the same window shifted right by one token.

    Use it for exact epochs: with ``stride == context_length`` every token is a target exactly once
    per epoch, as in the LLMs-from-scratch book (so results compare with the book's study); a
    smaller stride gives overlapping windows (stride 1: every possible window). Length is
    ``(N - context_length - 1) // stride + 1``. Windows are sliced on demand from the one shared
    array, so memory is O(N) even for stride 1.
    """

    def __init__(
        self,
        tokens: TokenArray,
        context_length: int,
        stride: int | None = None,
        what: str = "token sequence",
    ) -> None:
        self.tokens = _check_tokens(tokens)
        self.context_length = _check_positive("context_length", context_length)
        self.stride = _check_positive("stride", context_length if stride is None else stride)
        _check_length(len(self.tokens), self.context_length, what)
        self._len = (len(self.tokens) - self.context_length - 1) // self.stride + 1

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(index)
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        return _window(self.tokens, index * self.stride, self.context_length)


class RandomWindowDataset(Dataset):
    """``num_samples`` windows per epoch at random offsets in ``[0, N - context_length - 1]``,
    nanoGPT style.

    Use it for large corpora and iteration-based training (``max_steps``): there is no notion of
    an epoch covering the corpus, windows overlap at random, and ``num_samples`` only sets how many
    windows make one "epoch" for the loop. Items are ``(epoch, i)`` pairs, as
    :class:`EpochShuffleSampler` with ``with_epoch=True`` yields them (a plain ``i`` means epoch
    0). The offset depends only on ``(seed, epoch, i)``: every epoch draws fresh offsets, yet the
    dataset stays deterministic under any sampler, with any number of workers, and a resumed run
    sees the same windows. The epoch travels with the index, not as dataset state, because
    DataLoader workers hold their own copy of the dataset.
    """

    def __init__(
        self,
        tokens: TokenArray,
        context_length: int,
        num_samples: int,
        seed: int = 1337,
        what: str = "token sequence",
    ) -> None:
        self.tokens = _check_tokens(tokens)
        self.context_length = _check_positive("context_length", context_length)
        self.num_samples = _check_positive("num_samples", num_samples)
        self.seed = int(seed)
        _check_length(len(self.tokens), self.context_length, what)
        self._num_offsets = len(self.tokens) - self.context_length  # offsets 0 .. N-ctx-1

    def __len__(self) -> int:
        return self.num_samples

    def offset(self, index: int, epoch: int = 0) -> int:
        """The start of window ``index`` in ``epoch``."""
        rng = np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)])
        return int(rng.integers(self._num_offsets))

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        epoch, index = int(epoch), int(index)
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples or epoch < 0:
            raise IndexError(f"sample {item} out of range for {self.num_samples} samples")
        return _window(self.tokens, self.offset(index, epoch), self.context_length)


class EpochShuffleSampler(Sampler[int | tuple[int, int]]):
    """Indices ``0..n-1``, in an order that depends only on ``(seed, epoch)`` when shuffling.

    ``with_epoch=True`` yields ``(epoch, index)`` pairs instead, for datasets whose items change
    with the epoch (:class:`RandomWindowDataset`).

    Lightning calls ``set_epoch`` at the start of each epoch; under DDP it wraps this sampler in
    ``DistributedSamplerWrapper``, which forwards ``set_epoch`` here and shards the order across
    ranks, so every rank sees a disjoint, reproducible part of the same epoch order.
    """

    def __init__(
        self,
        data_source_len: int,
        seed: int = 1337,
        shuffle: bool = True,
        with_epoch: bool = False,
    ) -> None:
        self.n = int(data_source_len)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.with_epoch = bool(with_epoch)
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, position: int) -> None:
        """Make the next pass start at ``position`` of ``epoch``'s order (a run resumed mid-epoch
        continues with the windows it has not seen). It applies once, and only if that pass is
        ``epoch``'s; ``len`` stays the whole epoch, as Lightning counts batches from the start.
        """
        self.epoch = int(epoch)
        self._resume = (int(epoch), int(position))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        start = 0
        if self._resume is not None:
            epoch, position = self._resume
            self._resume = None
            start = position if epoch == self.epoch else 0
        if not self.shuffle:
            order = list(range(start, self.n))
        else:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, self.epoch])
            order = rng.permutation(self.n)[start:].tolist()
        if self.with_epoch:
            return iter([(self.epoch, i) for i in order])
        return iter(order)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
