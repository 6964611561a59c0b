"""Train from a prepared dataset (llm_scratch/data/shards.py): ``data=shards data.path=<dir>``.

The shards are memory-mapped, so start-up time and memory do not grow with the corpus. Training
windows of ``context_length + 1`` tokens are read across shard boundaries from the split's token
stream; ``sampling=epoch`` visits every window once per epoch in a seeded shuffled order,
``sampling=random`` draws ``samples_per_epoch`` windows at random offsets (nanoGPT's).
``align=window`` places windows every ``context_length`` tokens, crossing document boundaries;
``align=document`` starts them at each document's first token and every ``context_length``
tokens after it within the document (a document's last window runs on past its end-of-text).
Validation: non-overlapping windows in order over the validation split, the same for both
alignments. Under DDP or FSDP each process reads its own windows of the epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llm_scratch.data.corpora import cache_dir as default_cache_dir
from llm_scratch.data.datamodule import ResumableDataModule, _positive_int
from llm_scratch.data.datasets import EpochShuffleSampler
from llm_scratch.data.shards import docs_name, open_shard, read_index, verify_files
from llm_scratch.data.tokenizers import Tokenizer, tokenizer_from_dict
from llm_scratch.errors import UserError
from llm_scratch.utils.io import atomic_write_text

log = logging.getLogger(__name__)

ALIGNS = ("window", "document")
SAMPLINGS = ("epoch", "random")
VERIFY = ("auto", "always", "size")


class TokenStream:
    """A split's shards as one token sequence, read by slices; the maps open lazily in each
    process (a DataLoader worker maps the files itself instead of receiving a copy)."""

    def __init__(self, folder: Path, split: dict[str, Any], dtype: str) -> None:
        self.paths = [folder / s["name"] for s in split["shards"]]
        self.counts = [int(s["tokens"]) for s in split["shards"]]
        self.ends = np.cumsum(self.counts)
        self.dtype = np.dtype(dtype)
        self._maps: list[np.memmap] | None = None

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def _open(self) -> list[np.memmap]:
        if self._maps is None:
            self._maps = [
                open_shard(p, self.dtype, n) for p, n in zip(self.paths, self.counts, strict=True)
            ]
        return self._maps

    def slice(self, start: int, length: int) -> np.ndarray:
        maps = self._open()
        out = np.empty(length, dtype=np.int64)
        shard = int(np.searchsorted(self.ends, start, side="right"))
        filled = 0
        while filled < length:
            begin = start + filled - (int(self.ends[shard - 1]) if shard else 0)
            piece = maps[shard][begin : begin + length - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}


class ShardWindows(Dataset):
    """Next-token windows over a :class:`TokenStream`.

    ``starts`` (an int64 array) lists the window starts; None means ``num_windows`` starts
    every ``stride`` tokens. With ``num_samples`` the items are ``(epoch, i)`` pairs: window
    ``i`` of ``epoch`` starts at a random one of those starts, drawn from ``(seed, epoch, i)``
    alone (nanoGPT's random windows: stride 1, any offset).
    """

    def __init__(
        self,
        stream: TokenStream,
        context_length: int,
        starts: np.ndarray | None = None,
        num_windows: int | None = None,
        num_samples: int | None = None,
        seed: int = 1337,
        stride: int | None = None,
    ) -> None:
        self.stream, self.context_length = stream, context_length
        self.stride = context_length if stride is None else stride
        self.starts = starts
        self.num_starts = len(starts) if starts is not None else int(num_windows or 0)
        self.num_samples, self.seed = num_samples, seed

    def __len__(self) -> int:
        return self.num_samples if self.num_samples is not None else self.num_starts

    def start(self, item: int | tuple[int, int]) -> int:
        """Where item ``item``'s window begins in the split's token stream."""
        if self.num_samples is not None:
            epoch, index = item if isinstance(item, tuple) else (0, item)
            rng = np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)])
            k = int(rng.integers(self.num_starts))
        else:
            k = int(item)
            if not 0 <= k < self.num_starts:
                raise IndexError(f"window {k} out of range for {self.num_starts} windows")
        return int(self.starts[k]) if self.starts is not None else k * self.stride

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = torch.from_numpy(self.stream.slice(self.start(item), self.context_length + 1))
        return chunk[:-1], chunk[1:]


class StreamingEpochSampler(EpochShuffleSampler):
    """:class:`EpochShuffleSampler` that yields its order from a numpy array instead of a list
    of Python ints (8 bytes a window, not about 36)."""

    def __iter__(self):
        start = 0
        if self._resume is not None:
            epoch, position = self._resume
            self._resume = None
            start = position if epoch == self.epoch else 0
        if self.shuffle:
            order = np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, self.epoch]).permutation(
                self.n
            )
        else:
            order = np.arange(self.n)
        epoch = self.epoch
        for i in order[start:]:
            yield (epoch, int(i)) if self.with_epoch else int(i)


def _document_starts(docs: np.ndarray, total: int, context_length: int) -> np.ndarray:
    """Window starts that tile each document from its first token (the last may run past it)."""
    ends = np.append(docs[1:], total)
    lengths = ends - docs
    per_doc = np.maximum(1, -(-(lengths - 1) // context_length))  # windows covering its targets
    first = np.repeat(docs, per_doc)
    within = np.arange(int(per_doc.sum())) - np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
    starts = first + within * context_length
    return starts[starts + context_length + 1 <= total]


class ShardDataModule(ResumableDataModule):
    """Train/validation windows from a dataset prepared by ``training/prepare_data.py``.

    ``verify``: ``auto`` checks each file's size at every start and its sha256 once (then again
    only when the file changes; remembered in the cache folder), ``always`` hashes every start,
    ``size`` only checks sizes.
    """

    def __init__(
        self,
        path: str,
        context_length: int = 256,
        batch_size: int = 8,
        align: str = "window",
        sampling: str = "epoch",
        samples_per_epoch: int | None = None,
        verify: str = "auto",
        num_workers: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        cache_dir: str | None = None,
        seed: int = 1337,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, shuffle, drop_last, seed)
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise UserError("data.path must be the folder of a prepared dataset: data.path=<dir>.")
        _positive_int("context_length", context_length)
        _positive_int("samples_per_epoch", samples_per_epoch, allow_none=True)
        for name, value, allowed in (
            ("align", align, ALIGNS),
            ("sampling", sampling, SAMPLINGS),
            ("verify", verify, VERIFY),
        ):
            if value not in allowed:
                raise UserError(f"data.{name} must be one of {', '.join(allowed)}, got {value!r}.")
        self.path = Path(path).expanduser()
        self.index = read_index(self.path)
        self.context_length = int(context_length)
        self.align, self.sampling, self.verify = align, sampling, verify
        self.samples_per_epoch = samples_per_epoch
        self.cache_dir = cache_dir
        self._tokenizer: Tokenizer | None = None
        self._verified = False

    # ----------------------------------------------------------------- what training reads
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            tok = tokenizer_from_dict(self.index["tokenizer"])
            if tok.fingerprint != self.index.get("tokenizer_fingerprint"):
                raise UserError(
                    f"The tokenizer of {self.path} ({tok.name}) is not the one its shards were made "
                    f"with (fingerprint {tok.fingerprint}, index {self.index.get('tokenizer_fingerprint')}); "
                    f"prepare the dataset again: {self.index.get('command')}"
                )
            self._tokenizer = tok
        return self._tokenizer

    @property
    def eos_id(self) -> int | None:
        """The end-of-text id between documents (the reserved character, for char shards)."""
        return self.index.get("eot_id")

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def is_named_corpus(self) -> bool:
        return False

    @property
    def default_prompt(self) -> str:
        return str(self.index.get("prompt") or "\n")

    @property
    def dataset_info(self) -> dict[str, Any]:
        """What a run's summary.json names the data by."""
        return {"path": str(self.path.resolve()), "fingerprint": self.index["fingerprint"]}

    # ----------------------------------------------------------------- checks
    def _verify(self) -> None:
        if self._verified:
            return
        if self.verify == "size":
            verify_files(self.path, self.index, sha256=False)
        else:
            stamp = default_cache_dir(self.cache_dir) / "verified_shards.json"
            known: dict[str, Any] = {}
            if self.verify == "auto":
                try:
                    known = json.loads(stamp.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    known = {}
            hashed = verify_files(self.path, self.index, sha256=True, known=known)
            if hashed:
                log.info("Checked the sha256 of %d file(s) of %s", len(hashed), self.path)
                with contextlib.suppress(OSError):  # only a cache: else hashed again next time
                    atomic_write_text(stamp, json.dumps(known))
        self._verified = True

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Check the shards against the index (Lightning: once per node, before setup)."""
        self._verify()

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        if not self._verified:  # sizes at least, in every process
            verify_files(self.path, self.index, sha256=False)
        ctx = self.context_length
        splits = self.index["splits"]
        train = TokenStream(self.path, splits["train"], self.index["dtype"])
        val = TokenStream(self.path, splits["val"], self.index["dtype"])
        for name, stream in (("training", train), ("validation", val)):
            if len(stream) < ctx + 1:
                raise UserError(
                    f"The {name} split of {self.path} has {len(stream)} tokens, fewer than "
                    f"context_length+1 = {ctx + 1}; use a smaller data.context_length or prepare "
                    "more data (a larger val_fraction for the validation split)."
                )
        if self.align == "document":
            docs = np.fromfile(self.path / docs_name("train"), dtype="<i8")
            starts = _document_starts(docs, len(train), ctx)
            n = len(starts)
        else:
            starts = None
            n = (len(train) - ctx - 1) // ctx + 1
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        if self.sampling == "random":
            samples = self.samples_per_epoch or n
            samples -= samples % world
            offsets = n if starts is not None else len(train) - ctx  # any offset (nanoGPT)
            train_ds = ShardWindows(
                train, ctx, starts, offsets, num_samples=samples, seed=self.seed, stride=1
            )
        else:
            # every rank gets as many windows as the others: none is repeated to even them out
            n -= n % world
            train_ds = ShardWindows(train, ctx, None if starts is None else starts[:n], n)
        if len(train_ds) < self.batch_size * (1 if self.drop_last else 0) or len(train_ds) == 0:
            raise UserError(
                f"The training split of {self.path} gives {len(train_ds)} windows, fewer than "
                f"batch_size={self.batch_size}; use a smaller batch_size or context_length."
            )
        self.val_dataset = ShardWindows(val, ctx, None, (len(val) - ctx - 1) // ctx + 1)
        self.train_sampler = StreamingEpochSampler(
            len(train_ds),
            seed=self.seed,
            shuffle=self.shuffle,
            with_epoch=self.sampling == "random",
        )
        self.train_dataset = train_ds
        self._apply_resume()

    @property
    def tokens_train(self) -> int:
        return int(self.index["splits"]["train"]["tokens"])

    @property
    def tokens_val(self) -> int:
        return int(self.index["splits"]["val"]["tokens"])
