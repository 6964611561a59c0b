"""Tokenizers: a character-level one and tiktoken BPE encodings behind one small protocol.

A tokenizer saves itself as a small JSON file (``save(path)`` / :func:`load_tokenizer`), so a
checkpoint can be decoded later without the corpus it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from llm_scratch.errors import UserError
from llm_scratch.utils.io import atomic_write_text

EOS_TOKEN = "<|endoftext|>"
_MAX_SHOWN_CHARS = 10


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of the package needs from a tokenizer."""

    name: str  # "char", or the tiktoken encoding name ("gpt2", ...)
    vocab_size: int
    eos_id: int | None

    @property
    def fingerprint(self) -> str:
        """Short hash of the vocabulary; with ``name`` it keys the token caches."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_byte_lengths(self) -> list[int]:
        """Each token id's length in UTF-8 bytes (0 for special tokens): bits per byte."""
        ...

    def save(self, path: str | os.PathLike) -> None: ...


def _as_int_list(ids: Any) -> list[int]:
    """Accept a list, a numpy array or a torch tensor of token ids."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


class CharTokenizer:
    """Character-level tokenizer: the vocabulary is the sorted distinct characters of a corpus."""

    name = "char"
    eos_id: int | None = None

    def __init__(self, chars: Iterable[str]) -> None:
        chars = sorted(set(chars))
        if not chars:
            raise UserError(
                "The character vocabulary is empty; build it from a non-empty training corpus."
            )
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise UserError(
                f"A character vocabulary holds single characters, got {bad[:_MAX_SHOWN_CHARS]!r}; "
                "fix the tokenizer file or rebuild it from the corpus."
            )
        self.chars: list[str] = chars
        self.vocab_size: int = len(chars)
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise UserError(
                "Cannot build a character vocabulary from empty text; use a non-empty corpus."
            )
        return cls(set(text))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.chars).encode("utf-8")).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            unknown = list(dict.fromkeys(c for c in text if c not in stoi))
            shown = ", ".join(repr(c) for c in unknown[:_MAX_SHOWN_CHARS])
            more = (
                f" and {len(unknown) - _MAX_SHOWN_CHARS} more"
                if len(unknown) > _MAX_SHOWN_CHARS
                else ""
            )
            raise UserError(
                f"Text has {len(unknown)} character(s) outside the char tokenizer's vocabulary: "
                f"{shown}{more}. The vocabulary ({self.vocab_size} characters) comes from the "
                "training corpus; use only characters from it, or train on a corpus that has them."
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        ids = _as_int_list(ids)
        bad = sorted({i for i in ids if not 0 <= i < self.vocab_size})
        if bad:
            raise UserError(
                f"Token ids {bad[:_MAX_SHOWN_CHARS]} are outside the char vocabulary "
                f"(size {self.vocab_size}); decode with the tokenizer the model was trained with."
            )
        chars = self.chars
        return "".join(chars[i] for i in ids)

    def token_byte_lengths(self) -> list[int]:
        """The UTF-8 length of each token id's text (for bits per byte); an id past the
        characters (a reserved end-of-text id) counts 0 bytes."""
        lengths = [len(c.encode("utf-8")) for c in self.chars]
        lengths += [0] * (self.vocab_size - len(lengths))
        if self.eos_id is not None and 0 <= self.eos_id < len(lengths):
            lengths[self.eos_id] = 0
        return lengths

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": self.chars}

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class BPETokenizer:
    """A tiktoken encoding (``gpt2`` by default); ``<|endoftext|>`` is the end-of-text token."""

    def __init__(self, encoding: str = "gpt2") -> None:
        import tiktoken

        known = tiktoken.list_encoding_names()
        if encoding not in known:
            raise UserError(
                f"Unknown tokenizer {encoding!r}; use 'char' or a tiktoken encoding: "
                f"{', '.join(known)}."
            )
        try:
            enc = tiktoken.get_encoding(encoding)
        except Exception as e:  # network error, hash mismatch, unwritable cache, ...
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(
                f"Could not load the tiktoken encoding {encoding!r} ({type(e).__name__}: "
                f"{reason[:200]}). Set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached "
                "files for it, or connect to the internet so tiktoken can download them."
            ) from e
        self.name: str = encoding
        self._enc = enc
        self.vocab_size: int = enc.n_vocab
        self.eos_id: int | None = (
            enc.encode_single_token(EOS_TOKEN) if EOS_TOKEN in enc.special_tokens_set else None
        )
        self._allowed = {EOS_TOKEN} if self.eos_id is not None else set()

    @property
    def fingerprint(self) -> str:
        enc = self._enc
        desc = json.dumps(
            [enc.name, enc.n_vocab, enc._pat_str, sorted(enc._special_tokens.items())]
        )
        return hashlib.sha256(desc.encode("utf-8")).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        # Other special-token strings in the text are encoded as ordinary text.
        return self._enc.encode(text, allowed_special=self._allowed, disallowed_special=())

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(_as_int_list(ids))

    def token_byte_lengths(self) -> list[int]:
        """The length in bytes of each token id's text (for bits per byte, as nanochat
        computes it); special tokens such as ``<|endoftext|>`` count 0 bytes."""
        enc = self._enc
        special = set(enc._special_tokens.values())
        lengths = []
        for token in range(self.vocab_size):
            try:
                lengths.append(0 if token in special else len(enc.decode_single_token_bytes(token)))
            except KeyError:  # an unused id in the encoding's range
                lengths.append(0)
        return lengths

    def to_dict(self) -> dict[str, Any]:
        return {"type": "tiktoken", "encoding": self.name}

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    # Pickle by name only (DataLoader workers, spawn): the encoding reloads from tiktoken's cache.
    def __getstate__(self) -> dict[str, Any]:
        return {"encoding": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["encoding"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and other.name == self.name

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"BPETokenizer({self.name!r}, vocab_size={self.vocab_size})"


def build_tokenizer(name: str, text: str | None = None) -> Tokenizer:
    """``"char"`` -> :class:`CharTokenizer` over ``text``; anything else -> a tiktoken encoding."""
    if name == "char":
        if text is None:
            raise UserError(
                "The 'char' tokenizer needs the corpus text to build its vocabulary; pass the text."
            )
        return CharTokenizer.from_text(text)
    return BPETokenizer(name)


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "char" and isinstance(d.get("chars"), Sequence):
        return CharTokenizer(d["chars"])
    if kind == "tiktoken" and isinstance(d.get("encoding"), str):
        return BPETokenizer(d["encoding"])
    raise UserError(
        f"Unrecognised tokenizer description {str(d)[:100]!r}; expected "
        '{"type": "char", "chars": [...]} or {"type": "tiktoken", "encoding": "gpt2"}.'
    )


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer written by ``Tokenizer.save``."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"Tokenizer file {path} does not exist; pass the tokenizer.json saved with the run."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"Cannot read tokenizer file {path} ({e}); pass the tokenizer.json saved with the run."
        ) from None
    return tokenizer_from_dict(d)
