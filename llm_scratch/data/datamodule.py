"""LightningDataModule for next-token prediction over one corpus (built by Hydra from plain args)."""

from __future__ import annotations

import logging
import numbers
import os
from typing import Annotated, Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from llm_scratch.constraints import Check, Count, Seed, Workers
from llm_scratch.data.corpora import CORPORA, load_corpus
from llm_scratch.data.corpora import default_prompt as _corpus_prompt
from llm_scratch.data.datasets import EpochShuffleSampler, RandomWindowDataset, SlidingWindowDataset
from llm_scratch.data.token_cache import tokenize_cached
from llm_scratch.data.tokenizers import CharTokenizer, Tokenizer, build_tokenizer
from llm_scratch.errors import UserError

log = logging.getLogger(__name__)

SAMPLINGS = ("sliding", "random")


def _positive_int(name: str, value: object, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "an integer >= 0" if minimum == 0 else "a positive integer"
        none = " or null" if allow_none else ""
        raise UserError(f"data.{name} must be {what}{none}, got {value!r}; fix it in the config.")


class ResumableDataModule(L.LightningDataModule):
    """What the data modules share: a seeded training order (:class:`EpochShuffleSampler`)
    that a checkpoint resumes mid-epoch at its first untrained item, and the loaders.

    A subclass's ``setup`` sets ``train_dataset``, ``val_dataset`` and ``train_sampler``, then
    calls ``_apply_resume``; ``collate_fn`` (None: torch's default) makes its batches.
    """

    collate_fn: Any = None
    tokenizer: Tokenizer  # a subclass's: built from its settings (and its corpus, for char)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_id

    def __init__(
        self,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        shuffle: bool,
        drop_last: bool,
        seed: int,
    ) -> None:
        super().__init__()
        _positive_int("batch_size", batch_size)
        _positive_int("num_workers", num_workers, minimum=0)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise UserError(f"data.seed must be an integer, got {seed!r}.")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.train_sampler: EpochShuffleSampler | None = None
        self._resume: dict[str, Any] | None = None  # a checkpoint's place in the epoch order

    def _require_setup(self) -> None:
        if self.train_dataset is None:
            raise RuntimeError("call setup() (or let the Trainer call it) before using the data")

    def _loader_kwargs(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
            "collate_fn": self.collate_fn,
            # Each iterator draws its workers' base seed from this generator, not from torch's
            # global RNG, so starting an epoch or a validation does not move the dropout RNG (a
            # resumed run then draws the same dropout masks as an uninterrupted one).
            "generator": torch.Generator().manual_seed(self.seed),
        }

    # ----------------------------------------------------------------- exact resumption
    def state_dict(self) -> dict[str, Any]:
        """Where training stands in the epoch's order (saved in every checkpoint).

        Lightning counts the batches trained in the epoch; its DataLoader prefetches one ahead,
        so the position is read from the trainer's progress rather than from the loader.
        """
        trainer = self.trainer
        if trainer is None or self.train_sampler is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {
            "epoch": self.train_sampler.epoch,
            "windows_done": int(done) * self.batch_size * trainer.world_size,
            "num_windows": self.train_sampler.n,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch at the first item the saved run had not trained on (under
        DDP the saved epoch restarts from its first batch instead)."""
        self._resume = dict(state) if state and "windows_done" in state else None
        self._apply_resume()

    def _apply_resume(self) -> None:
        state, sampler = self._resume, self.train_sampler
        if state is None or sampler is None:
            return
        # other data or another seed: the saved position means nothing for this order
        if (state.get("num_windows"), state.get("seed")) == (sampler.n, self.seed):
            trainer = self.trainer
            if trainer is not None and trainer.world_size > 1:
                # DistributedSamplerWrapper keeps the whole epoch's length and would index past
                # the end of a shortened order: the epoch restarts (same seed-based order).
                if int(state["windows_done"]) > 0 and trainer.is_global_zero:
                    log.warning(
                        "Resuming under DDP (world_size=%d): epoch %d restarts from its first "
                        "batch; the order stays the same (seed %d).",
                        trainer.world_size,
                        int(state["epoch"]),
                        self.seed,
                    )
                sampler.set_epoch(int(state["epoch"]))
            else:
                sampler.resume_at(int(state["epoch"]), int(state["windows_done"]))
        self._resume = None

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        return DataLoader(
            self.train_dataset,
            sampler=self.train_sampler,
            drop_last=self.drop_last,
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        return DataLoader(self.val_dataset, shuffle=False, drop_last=False, **self._loader_kwargs())


class LMDataModule(ResumableDataModule):
    """Train/validation next-token windows over one corpus.

    ``corpus`` is a named corpus (``verdict``, ``shakespeare``), a path to a text file or to a
    folder of ``.txt`` files, or ``"text"`` with the file or folder in ``path``. ``tokenizer`` is
    ``"char"`` or a tiktoken encoding name. The token stream is split contiguously: the first
    ``1 - val_fraction`` for training, the rest for validation.

    ``sampling="sliding"`` trains on windows at ``stride`` (default ``context_length``), exact
    epochs; ``sampling="random"`` trains on ``samples_per_epoch`` windows at random offsets,
    drawn afresh each epoch (nanoGPT style; default: as many windows as a non-overlapping pass).
    Validation always uses non-overlapping windows in order, so it is deterministic and
    comparable between settings.

    ``vocab_size`` (and ``tokenizer``) can be read before the Trainer runs; for the char tokenizer
    that loads the corpus text (downloading a named corpus if needed).
    """

    def __init__(
        self,
        corpus: str = "verdict",
        tokenizer: str = "gpt2",
        context_length: Count = 256,
        stride: Count | None = None,
        batch_size: Count = 8,
        val_fraction: Annotated[float, Check(gt=0, lt=1)] = 0.1,
        sampling: Annotated[str, Check(choices=SAMPLINGS)] = "sliding",
        # an epoch's shuffled order holds one 8-byte index per sample
        samples_per_epoch: Annotated[int | None, Check(ge=1, bytes_each=8)] = None,
        num_workers: Workers = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        seed: Seed = 1337,
        path: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, shuffle, drop_last, seed)
        corpus = os.fspath(corpus) if corpus is not None else corpus
        if not isinstance(corpus, str) or not corpus:
            raise UserError(
                f"data.corpus must be a corpus name ({', '.join(CORPORA)}), 'text' or a path, "
                f"got {corpus!r}."
            )
        if path is not None and corpus != "text":
            raise UserError(
                f"data.path={path} is given, but data.corpus={corpus} reads its own text and would "
                f"ignore it; to train on that file: data=text data.path={path} (or leave "
                "data.path unset)."
            )
        if corpus == "text" and not path:
            raise UserError(
                "data.corpus is 'text' but data.path is not set; set data.path to a text file or "
                "a folder of .txt files."
            )
        if not isinstance(tokenizer, str) or not tokenizer:
            raise UserError(
                f"data.tokenizer must be 'char' or a tiktoken encoding name, got {tokenizer!r}."
            )
        _positive_int("context_length", context_length)
        _positive_int("stride", stride, allow_none=True)
        _positive_int("samples_per_epoch", samples_per_epoch, allow_none=True)
        if (
            isinstance(val_fraction, bool)
            or not isinstance(val_fraction, numbers.Real)
            or not 0 < val_fraction < 1
        ):
            raise UserError(
                f"data.val_fraction must be a number strictly between 0 and 1, got "
                f"{val_fraction!r}; e.g. 0.1 keeps the last 10% of the tokens for validation."
            )
        if sampling not in SAMPLINGS:
            raise UserError(
                f"data.sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}."
            )

        self.corpus = corpus
        self.path = path
        self.tokenizer_name = tokenizer
        self.context_length = int(context_length)
        self.stride = int(stride) if stride is not None else self.context_length
        self.val_fraction = float(val_fraction)
        self.sampling = sampling
        self.samples_per_epoch = None if samples_per_epoch is None else int(samples_per_epoch)
        self.data_dir = data_dir
        self.cache_dir = cache_dir

        self._text: str | None = None
        self._tokenizer: Tokenizer | None = None
        self._tokens: np.ndarray | None = None
        self._prepared = False

    # ----------------------------------------------------------------- corpus and tokenizer
    @property
    def source(self) -> str:
        """The corpus name or path passed to :func:`load_corpus`."""
        return self.path if self.corpus == "text" else self.corpus

    @property
    def is_named_corpus(self) -> bool:
        return self.source in CORPORA

    def _load_text(self, download: bool = True) -> str:
        if self._text is None:
            self._text = load_corpus(
                self.source, data_dir=self.data_dir, cache_dir=self.cache_dir, download=download
            )
        return self._text

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer, built on first use (the char one loads the corpus text for its vocabulary)."""
        if self._tokenizer is None:
            text = self._load_text() if self.tokenizer_name == "char" else None
            self._tokenizer = build_tokenizer(self.tokenizer_name, text)
        return self._tokenizer

    @property
    def default_prompt(self) -> str:
        """Prompt for sample generation: the book's for verdict, ``ROMEO:`` for shakespeare."""
        prompt = _corpus_prompt(self.source)
        if self.tokenizer_name == "char" and not self.is_named_corpus:
            tok = self.tokenizer
            assert isinstance(tok, CharTokenizer)
            if not set(prompt) <= set(tok.chars):
                return self._load_text()[:1]  # a char the vocabulary surely has
        return prompt

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Download the corpus if needed and fill the token cache (Lightning: once per node)."""
        if self._prepared:
            return
        tokenize_cached(self._load_text(download=True), self.tokenizer, self.cache_dir)
        self._prepared = True

    def setup(self, stage: str | None = None) -> None:
        """Load the text (no download), map the cached tokens, split, and build the datasets."""
        if self.train_dataset is not None:
            return
        text = self._load_text(download=False)
        tokens = tokenize_cached(text, self.tokenizer, self.cache_dir)
        n = len(tokens)
        ctx = self.context_length
        n_train = int(n * (1.0 - self.val_fraction))
        n_val = n - n_train
        if n_val < ctx + 1:
            raise UserError(
                f"The validation split has {n_val} tokens (val_fraction={self.val_fraction} of "
                f"{n}), fewer than context_length+1 = {ctx + 1}; use a smaller context_length, a "
                "larger val_fraction, or a longer corpus."
            )
        if n_train < ctx + 1:
            raise UserError(
                f"The training split has {n_train} tokens (of {n}), fewer than context_length+1 = "
                f"{ctx + 1}; use a smaller context_length or val_fraction, or a longer corpus."
            )
        train_tokens, val_tokens = tokens[:n_train], tokens[n_train:]
        if self.sampling == "sliding":
            train_ds: Dataset = SlidingWindowDataset(
                train_tokens, ctx, self.stride, what="training split"
            )
        else:
            num = self.samples_per_epoch or (n_train - ctx - 1) // ctx + 1
            train_ds = RandomWindowDataset(
                train_tokens, ctx, num, seed=self.seed, what="training split"
            )
        if self.drop_last and len(train_ds) < self.batch_size:
            raise UserError(
                f"The training split gives {len(train_ds)} windows, fewer than batch_size="
                f"{self.batch_size}, so with drop_last an epoch has no batch; use a smaller "
                "batch_size, context_length or stride, or set drop_last=false."
            )
        self._tokens = tokens
        self.val_dataset = SlidingWindowDataset(val_tokens, ctx, ctx, what="validation split")
        # random windows are drawn afresh each epoch: the sampler hands the epoch to the dataset
        self.train_sampler = EpochShuffleSampler(
            len(train_ds),
            seed=self.seed,
            shuffle=self.shuffle,
            with_epoch=isinstance(train_ds, RandomWindowDataset),
        )
        self.train_dataset = train_ds
        self._apply_resume()

    @property
    def tokens_train(self) -> int:
        """Number of tokens in the training split (after ``setup``)."""
        self._require_setup()
        return len(self.train_dataset.tokens)

    @property
    def tokens_val(self) -> int:
        """Number of tokens in the validation split (after ``setup``)."""
        self._require_setup()
        return len(self.val_dataset.tokens)
