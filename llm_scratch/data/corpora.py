"""Text corpora: a registry of named corpora (found locally or downloaded and verified) and local text.

A named corpus is looked up in the data directory (argument or ``LLM_SCRATCH_DATA_DIR``), then in
the user cache (``LLM_SCRATCH_CACHE_DIR`` or ``~/.cache/llm_scratch``); a file found nowhere is
downloaded into the cache, and its sha256 is checked before it is renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llm_scratch.errors import UserError
from llm_scratch.utils.io import atomic_open

DATA_DIR_ENV = "LLM_SCRATCH_DATA_DIR"
CACHE_DIR_ENV = "LLM_SCRATCH_CACHE_DIR"
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class CorpusInfo:
    filename: str
    url: str
    sha256: str
    size: int  # bytes
    prompt: str  # default prompt for sample generation
    description: str = ""


CORPORA: dict[str, CorpusInfo] = {
    "verdict": CorpusInfo(
        filename="the-verdict.txt",
        url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
        sha256="b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
        size=20_479,
        prompt="Every effort moves you",
        description='"The Verdict", Edith Wharton (1908), the corpus of the LLMs-from-scratch book',
    ),
    "shakespeare": CorpusInfo(
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
        prompt="ROMEO:",
        description="Tiny Shakespeare (char-rnn, nanoGPT)",
    ),
}
DEFAULT_TEXT_PROMPT = "The "


def data_dir(override: str | os.PathLike | None = None) -> Path | None:
    """The data directory: ``override``, else ``$LLM_SCRATCH_DATA_DIR``, else None."""
    value = override if override not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    return Path(value).expanduser() if value is not None else None


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``override``, else ``$LLM_SCRATCH_CACHE_DIR``, else ~/.cache/llm_scratch."""
    value = override if override not in (None, "") else os.environ.get(CACHE_DIR_ENV) or None
    if value is None:
        return Path.home() / ".cache" / "llm_scratch"
    return Path(value).expanduser()


# Aliases: load_corpus and corpus_path take arguments named like the functions above.
_data_dir = data_dir
_cache_dir = cache_dir


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, out: BinaryIO) -> None:
    """Stream ``url`` into the open binary file ``out`` (tests monkeypatch this)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
        while chunk := resp.read(1 << 16):
            out.write(chunk)


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what goes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.nbytes += len(data)
        return self._f.write(data)


def _download_verified(info: CorpusInfo, dest: Path) -> None:
    """Download ``info.url`` into a temp file next to ``dest``; rename it only if the sha256 matches."""
    try:
        with atomic_open(dest, "wb") as f:
            w = _HashingWriter(f)
            try:
                _download(info.url, w)  # type: ignore[arg-type]
            except (urllib.error.URLError, OSError, ValueError) as e:
                # URLError and socket timeouts are OSErrors; ValueError: malformed URL.
                reason = getattr(e, "reason", None) or e
                raise UserError(
                    f"Could not download {info.filename} ({reason}). Download {info.url} and save "
                    f"it as {dest}, or set {DATA_DIR_ENV} to a folder that has it."
                ) from e
            digest = w.sha256.hexdigest()
            if digest != info.sha256:
                raise UserError(
                    f"The download of {info.filename} from {info.url} has sha256 {digest} "
                    f"({w.nbytes} bytes), expected {info.sha256} ({info.size} bytes); it was "
                    f"discarded. Try again, or download it by hand and save it as {dest}."
                )
    except OSError as e:  # cannot create the cache folder or the temp file
        raise UserError(
            f"Cannot write {dest} ({e}); set {CACHE_DIR_ENV} to a writable folder."
        ) from e


def _check_named_file(info: CorpusInfo, path: Path) -> None:
    try:
        digest = _sha256_file(path)
    except OSError as e:
        raise UserError(
            f"Cannot read {path} ({e}); fix its permissions or delete it to re-download it."
        ) from e
    if digest != info.sha256:
        raise UserError(
            f"{path} is not the expected {info.filename} (sha256 {digest}, expected "
            f"{info.sha256}); delete it so it is downloaded again, or replace it with {info.url}."
        )


def corpus_path(
    name: str,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Path:
    """Path of the named corpus' file, verified; downloaded into the cache when found nowhere."""
    if name not in CORPORA:
        raise UserError(
            f"Unknown corpus {name!r}; use one of {', '.join(CORPORA)} or a path to a text file "
            "or a folder of .txt files."
        )
    return named_file_path(CORPORA[name], data_dir, cache_dir, download)


def named_file_path(
    info: CorpusInfo,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Path:
    """Path of the registered file ``info`` (a corpus, or another named data file such as the
    instruction examples), verified: the data directory first, then the cache, else downloaded
    into the cache."""
    ddir = _data_dir(data_dir)
    cdir = _cache_dir(cache_dir)
    candidates = ([ddir / info.filename] if ddir is not None else []) + [cdir / info.filename]
    for path in candidates:
        if path.is_file():
            _check_named_file(info, path)
            return path
    dest = cdir / info.filename
    if not download:
        where = " or ".join(str(p.parent) for p in candidates)
        raise UserError(
            f"{info.filename} is not in {where}; run prepare_data() first to download it, or "
            f"download {info.url} and save it as {dest}."
        )
    _download_verified(info, dest)
    return dest


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"Cannot read {path} ({e.strerror or e}); check its permissions.") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8."
        ) from e


def load_corpus(
    name_or_path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> str:
    """The text of a named corpus (``verdict``, ``shakespeare``), a text file, or a folder.

    A folder's ``.txt`` files (directly in it, sorted by name) are joined with ``"\\n"``.
    """
    key = os.fspath(name_or_path)
    if key in CORPORA:
        text = _read_text(corpus_path(key, data_dir, cache_dir, download=download))
        what = f"corpus {key!r}"
    else:
        path = Path(key).expanduser()
        if path.is_file():
            text = _read_text(path)
        elif path.is_dir():
            try:
                files = sorted(p for p in path.glob("*.txt") if p.is_file())
            except OSError as e:
                raise UserError(f"Cannot list {path} ({e}); check its permissions.") from e
            if not files:
                raise UserError(
                    f"Folder {path} has no .txt files; put the training text in .txt files there."
                )
            text = "\n".join(_read_text(p) for p in files)
        else:
            raise UserError(
                f"{key!r} is neither a named corpus ({', '.join(CORPORA)}) nor an existing file "
                "or folder; pass a corpus name, a text file, or a folder of .txt files."
            )
        what = str(path)
    if not text.strip():
        raise UserError(f"The corpus {what} is empty; give a text with some content.")
    return text


def default_prompt(name_or_path: str | os.PathLike) -> str:
    """The prompt used to show samples: the book's prompt for verdict, ``ROMEO:`` for shakespeare."""
    info = CORPORA.get(os.fspath(name_or_path))
    return info.prompt if info is not None else DEFAULT_TEXT_PROMPT
