"""A damaged or wrong token cache is rebuilt, never used and never a traceback: empty, a
bit-rotted header, cut short, or a valid cache of other tokens copied over it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from llm_scratch.data.token_cache import token_cache_path, tokenize_cached
from llm_scratch.data.tokenizers import CharTokenizer

TEXT = "Every effort moves you, and every effort moves the run forward.\n" * 50


@pytest.mark.parametrize("damage", ["empty", "header", "cut-short", "bit-flip", "other-tokens"])
def test_a_damaged_or_wrong_token_cache_is_rebuilt(tmp_path, damage):
    tok = CharTokenizer.from_text(TEXT)
    good = tokenize_cached(TEXT, tok, cache_dir=tmp_path).tolist()
    path = token_cache_path(TEXT, tok, tmp_path)
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "header":
        path.write_bytes(b"\x93NUMPY\x01\x00\xff\xff{'descr': garbage" + data[40:])
    elif damage == "cut-short":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "bit-flip":
        flipped = bytearray(data)
        flipped[200] ^= 0x01
        path.write_bytes(bytes(flipped))
    else:  # a valid cache of another text (trailer and all), copied over this one
        other = TEXT[: len(TEXT) // 3]
        tokenize_cached(other, tok, cache_dir=tmp_path)
        shutil.copyfile(token_cache_path(other, tok, tmp_path), path)
        assert np.load(path).size < len(good)  # it loads: only its trailer tells
    arr = tokenize_cached(TEXT, tok, cache_dir=tmp_path)
    assert arr.tolist() == good
    assert tokenize_cached(TEXT, tok, cache_dir=tmp_path).tolist() == good  # rewritten whole


def test_a_cache_without_its_trailer_is_rebuilt_once(tmp_path, monkeypatch):
    """A cache from before the trailer (or any bare .npy) is tokenized again once, then used."""
    tok = CharTokenizer.from_text(TEXT)
    path = token_cache_path(TEXT, tok, tmp_path)
    path.parent.mkdir(parents=True)
    np.save(path, np.zeros(10, dtype=np.uint16))  # loads fine, wrong tokens
    assert tokenize_cached(TEXT, tok, cache_dir=tmp_path).tolist() == tok.encode(TEXT)

    def no_encode(text):
        raise AssertionError("tokenized again despite a good cache")

    monkeypatch.setattr(tok, "encode", no_encode)
    assert tokenize_cached(TEXT, tok, cache_dir=tmp_path).size == len(TEXT)
