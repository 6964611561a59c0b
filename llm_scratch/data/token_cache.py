"""Tokenized corpora cached as ``.npy`` files and mapped read-only, so a second run skips tokenizing.

The cache key is the sha256 of the corpus text plus the tokenizer's name and vocabulary fingerprint;
files live in ``cache_dir()/tokens/`` and are written atomically (temp file, then rename).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from llm_scratch.data.corpora import cache_dir as _default_cache_dir
from llm_scratch.data.tokenizers import Tokenizer
from llm_scratch.errors import UserError
from llm_scratch.utils.io import atomic_open


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id (0 .. vocab_size-1) fits in it, else uint32."""
    return np.dtype(np.uint16 if vocab_size - 1 <= np.iinfo(np.uint16).max else np.uint32)


def token_cache_path(
    text: str, tokenizer: Tokenizer, cache_dir: str | os.PathLike | None = None
) -> Path:
    text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", tokenizer.name)
    return (
        _default_cache_dir(cache_dir)
        / "tokens"
        / f"{safe_name}-{tokenizer.fingerprint}-{text_hash}.npy"
    )


def _load(path: Path, dtype: np.dtype) -> np.ndarray | None:
    """The cached array, or None when it is missing or unusable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if arr.ndim != 1 or arr.dtype != dtype:
        return None
    return arr


def tokenize_cached(
    text: str, tokenizer: Tokenizer, cache_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """Token ids of ``text`` as a read-only 1-D memmap, tokenizing only on a cache miss."""
    path = token_cache_path(text, tokenizer, cache_dir)
    dtype = token_dtype(tokenizer.vocab_size)
    arr = _load(path, dtype)
    if arr is not None:
        return arr
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if ids.size == 0:
        return ids.astype(dtype)
    if ids.min() < 0 or ids.max() >= tokenizer.vocab_size:
        raise ValueError(f"{tokenizer!r} produced ids outside [0, {tokenizer.vocab_size})")
    try:
        with atomic_open(path, "wb") as f:
            np.save(f, ids.astype(dtype), allow_pickle=False)
    except OSError as e:
        raise UserError(
            f"Cannot write the token cache {path} ({e}); set LLM_SCRATCH_CACHE_DIR to a writable "
            "folder."
        ) from e
    return np.load(path, mmap_mode="r")
