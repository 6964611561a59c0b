"""Token shards on disk: the format of a prepared dataset, its writer, reader and checks.

A prepared dataset is a folder (modded-nanogpt / llm.c style):

- ``<split>_<NNNNNN>.bin``: a 1024-byte header of 256 little-endian int32 (magic, format
  version, bytes per token (2: uint16, 4: uint32), the token count as two uint32 halves, low
  first; the rest zero), then the tokens;
- ``<split>_docs.bin``: little-endian int64, the offset of each document's first token in the
  split's token stream (its shards one after another), for windows aligned to documents;
- ``index.json``, written last and atomically: the tokenizer (to rebuild it) and its
  fingerprint, the end-of-text id, per split its shards (names, token counts, bytes, sha256),
  document, token and UTF-8 byte counts, the source's fingerprint and the settings. A folder
  without it is never taken for a dataset.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from llm_scratch.errors import UserError
from llm_scratch.utils.io import atomic_write_text

FORMAT = "llm_scratch-shards"
FORMAT_VERSION = 1
MAGIC = 0x4B4F544C  # b"LTOK" read as a little-endian int32
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
INDEX = "index.json"
SPLITS = ("train", "val")
PREPARE_COMMAND = "python training/prepare_data.py"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id (0 .. vocab_size-1) fits in it, else uint32."""
    return np.dtype(np.uint16 if vocab_size - 1 <= np.iinfo(np.uint16).max else np.uint32)


def shard_name(split: str, number: int) -> str:
    return f"{split}_{number:06d}.bin"


def docs_name(split: str) -> str:
    return f"{split}_docs.bin"


def encode_header(count: int, itemsize: int) -> bytes:
    header = np.zeros(HEADER_INTS, dtype="<u4")
    header[:5] = [MAGIC, FORMAT_VERSION, itemsize, count & 0xFFFFFFFF, count >> 32]
    return header.tobytes()


def read_header(path: Path) -> tuple[int, int]:
    """``(itemsize, token count)`` from a shard's header; a UserError if it is not one."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise UserError(f"Cannot read shard {path} ({e.strerror or e}).") from e
    if len(raw) < HEADER_BYTES:
        raise UserError(
            f"{path} is not a token shard (shorter than its {HEADER_BYTES}-byte header)."
        )
    header = np.frombuffer(raw, dtype="<u4")
    if int(header[0]) != MAGIC:
        raise UserError(f"{path} is not a token shard (wrong magic number).")
    if int(header[1]) != FORMAT_VERSION:
        raise UserError(
            f"{path} is a token shard of format version {int(header[1])}; this package reads "
            f"version {FORMAT_VERSION}: prepare the dataset again."
        )
    return int(header[2]), int(header[3]) | (int(header[4]) << 32)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def disk_full_error(path: Path, error: OSError) -> UserError:
    """The one line for a write that failed (a full disk above all), naming how to go on."""
    what = "No space left on the device" if error.errno == errno.ENOSPC else str(error)
    return UserError(
        f"{what} while writing {path}; free some space (or choose another out=) and run the same "
        "command again: it continues after the last finished shard."
    )


class ShardWriter:
    """Writes one shard: tokens appended to ``.<name>.tmp``, renamed to ``<name>`` by ``close``.

    Memory stays what one ``append`` holds; ``close`` fills in the header's count, fsyncs,
    hashes the file and renames it, so a shard under its final name is always whole.
    """

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.dtype = np.dtype(dtype)
        self.count = 0
        try:
            self._f = open(self.tmp, "wb")  # noqa: SIM115 - open across calls
            self._f.write(encode_header(0, self.dtype.itemsize))
        except OSError as e:
            self.abort()
            raise disk_full_error(self.tmp, e) from e

    def append(self, tokens: np.ndarray) -> None:
        if tokens.size == 0:
            return
        try:
            self._f.write(np.ascontiguousarray(tokens, dtype=self.dtype.newbyteorder("<")).data)
        except OSError as e:
            self.abort()
            raise disk_full_error(self.tmp, e) from e
        self.count += int(tokens.size)

    def close(self) -> dict[str, Any]:
        """Finish the shard; its entry for the index (name, tokens, bytes, sha256)."""
        try:
            self._f.seek(0)
            self._f.write(encode_header(self.count, self.dtype.itemsize))
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            digest = sha256_file(self.tmp)  # from the page cache: the file was just written
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise disk_full_error(self.path, e) from e
        return {
            "name": self.path.name,
            "tokens": self.count,
            "bytes": HEADER_BYTES + self.count * self.dtype.itemsize,
            "sha256": digest,
        }

    def abort(self) -> None:
        """Drop the unfinished shard."""
        f = getattr(self, "_f", None)
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def open_shard(path: Path, dtype: np.dtype, count: int) -> np.memmap:
    """The tokens of a shard, memory-mapped read-only, after checking its header."""
    itemsize, n = read_header(path)
    if itemsize != np.dtype(dtype).itemsize or n != count:
        raise UserError(
            f"Shard {path} holds {n} tokens of {itemsize} bytes; the index says {count} of "
            f"{np.dtype(dtype).itemsize}: prepare the dataset again."
        )
    return np.memmap(
        path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=HEADER_BYTES, shape=(count,)
    )


# ----------------------------------------------------------------------------- the index
def not_a_dataset(path: Path, why: str) -> UserError:
    return UserError(
        f"{path} is not a prepared dataset ({why}); prepare one with {PREPARE_COMMAND} "
        f"source=<file, folder or name> out={path} (an interrupted prepare continues when its "
        "command is run again)."
    )


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    """The index of the dataset in folder ``path``; a UserError when it is not one."""
    path = Path(path).expanduser()
    if not path.is_dir():
        what = "it does not exist" if not path.exists() else "not a folder"
        raise not_a_dataset(path, what)
    index_path = path / INDEX
    if not index_path.is_file():
        unfinished = (path / ".prepare.json").is_file()
        raise not_a_dataset(path, "its preparation did not finish" if unfinished else f"no {INDEX}")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise not_a_dataset(path, f"cannot read {INDEX}: {e}") from e
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise not_a_dataset(path, f"{INDEX} is not an index of {FORMAT}")
    if index.get("version") != FORMAT_VERSION:
        raise UserError(
            f"{path} was prepared in format version {index.get('version')}; this package reads "
            f"version {FORMAT_VERSION}: prepare it again ({index.get('command', PREPARE_COMMAND)})."
        )
    return index


def index_fingerprint(index: dict[str, Any]) -> str:
    """A short hash of what a dataset holds: its tokenizer, settings and every shard's sha256."""
    keys = ("format", "version", "tokenizer", "dtype", "eot_id", "settings", "source", "splits")
    desc = json.dumps({k: index.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(desc.encode("utf-8")).hexdigest()[:16]


def write_index(path: Path, index: dict[str, Any]) -> None:
    index = dict(index, fingerprint=index_fingerprint(index))
    try:
        atomic_write_text(path / INDEX, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    except OSError as e:
        raise disk_full_error(path / INDEX, e) from e


def verify_files(
    path: Path, index: dict[str, Any], sha256: bool = True, known: dict[str, Any] | None = None
) -> list[str]:
    """Check every file the index lists: present, of its size, and (``sha256``) of its hash.

    ``known`` maps a file's absolute path to ``{"size", "mtime_ns", "sha256"}`` found before:
    a file unchanged since is not hashed again. Returns the absolute paths hashed now.
    """
    hashed = []
    command = index.get("command", f"{PREPARE_COMMAND} ... out={path}")
    for info in index["splits"].values():
        entries = list(info["shards"]) + [info["docs"]]
        for entry in entries:
            file = path / entry["name"]
            try:
                st = file.stat()
            except OSError:
                raise UserError(
                    f"Shard {file} of the dataset is missing; prepare the dataset again: {command}"
                ) from None
            if st.st_size != entry["bytes"]:
                raise UserError(
                    f"Shard {file} has {st.st_size} bytes, the index says {entry['bytes']}; it is "
                    f"damaged: prepare the dataset again: {command}"
                )
            if not sha256:
                continue
            key = str(file.resolve())
            seen = (known or {}).get(key)
            if seen == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": entry["sha256"]}:
                continue
            if sha256_file(file) != entry["sha256"]:
                raise UserError(
                    f"Shard {file} does not match its sha256 in the index; it is damaged: prepare "
                    f"the dataset again: {command}"
                )
            hashed.append(key)
            if known is not None:
                known[key] = {
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "sha256": entry["sha256"],
                }
    return hashed
