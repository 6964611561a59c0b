"""Tokenized corpora cached as ``.npy`` files and mapped read-only, so a second run skips tokenizing.

The cache key is the sha256 of the corpus text plus the tokenizer's name and vocabulary fingerprint;
files live in ``cache_dir()/tokens/`` and are written atomically (temp file, then rename). After
the array each file carries a trailer (``np.load`` ignores it): the token count and a sha256 of
the key (file name), the count and the tokens. A file that does not load, or whose tokens are not the ones it was written with (cut
short, bit-rotted, or another file copied over it), is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
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


_MAGIC = b"LLMTOKv1"
_TRAILER = struct.Struct("<8sQ32s")  # magic, token count, sha256 of the tokens
_FULL_HASH_BYTES = 256 * 2**20  # above: head, tail and 64 strided pieces


def _digest(arr: np.ndarray, key: str) -> bytes:
    """sha256 of the cache's key (corpus hash, tokenizer), token count and tokens."""
    data = memoryview(np.ascontiguousarray(arr)).cast("B")
    h = hashlib.sha256(key.encode() + struct.pack("<Q", arr.size))
    if len(data) <= _FULL_HASH_BYTES:
        h.update(data)
        return h.digest()
    piece = 2**20
    for start in np.linspace(0, len(data) - piece, 66).astype(np.int64):
        h.update(data[int(start) : int(start) + piece])
    return h.digest()


def _load(path: Path, dtype: np.dtype) -> np.ndarray | None:
    """The cached array, or None when it is missing or unusable (then it is rebuilt): it does
    not load (empty, damaged header: numpy raises many kinds of errors), or its trailer is
    missing or does not match its tokens."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        with path.open("rb") as f:
            f.seek(-_TRAILER.size, os.SEEK_END)
            magic, count, digest = _TRAILER.unpack(f.read(_TRAILER.size))
    except Exception:  # noqa: BLE001 - any unreadable cache is rebuilt
        return None
    if arr.ndim != 1 or arr.dtype != dtype or magic != _MAGIC or count != arr.size:
        return None
    if _digest(arr, path.name) != digest:
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
        tokens = ids.astype(dtype)
        with atomic_open(path, "wb") as f:
            np.save(f, tokens, allow_pickle=False)
            f.write(_TRAILER.pack(_MAGIC, tokens.size, _digest(tokens, path.name)))
    except OSError as e:
        raise UserError(
            f"Cannot write the token cache {path} ({e}); set LLM_SCRATCH_CACHE_DIR to a writable "
            "folder."
        ) from e
    return np.load(path, mmap_mode="r")
