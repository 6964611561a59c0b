"""Data: corpora, tokenizers, token caches, next-token datasets, instruction examples and the
LightningDataModules."""

from llm_scratch.data.corpora import CORPORA, cache_dir, corpus_path, data_dir, load_corpus
from llm_scratch.data.token_cache import tokenize_cached
from llm_scratch.data.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)


def __getattr__(name: str):
    # The datasets need torch, imported on first use: preparing a corpus (prepare.py) needs
    # neither torch nor Lightning, and starts faster and smaller without them.
    if name in ("EpochShuffleSampler", "RandomWindowDataset", "SlidingWindowDataset"):
        from llm_scratch.data import datasets

        return getattr(datasets, name)
    # The DataModules are imported on first use: they need Lightning, and the rest of the data
    # package (tokenizers, corpora) must stay usable without it, e.g. to load a checkpoint.
    if name == "LMDataModule":
        from llm_scratch.data.datamodule import LMDataModule

        return LMDataModule
    if name == "ShardDataModule":
        from llm_scratch.data.shard_datamodule import ShardDataModule

        return ShardDataModule
    if name == "InstructDataModule":
        from llm_scratch.data.instruct_datamodule import InstructDataModule

        return InstructDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CORPORA",
    "BPETokenizer",
    "CharTokenizer",
    "EpochShuffleSampler",
    "InstructDataModule",
    "LMDataModule",
    "RandomWindowDataset",
    "ShardDataModule",
    "SlidingWindowDataset",
    "Tokenizer",
    "build_tokenizer",
    "cache_dir",
    "corpus_path",
    "data_dir",
    "load_corpus",
    "load_tokenizer",
    "tokenize_cached",
]
