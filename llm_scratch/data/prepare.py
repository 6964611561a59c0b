"""Prepare a corpus once into token shards (llm_scratch/data/shards.py): ``prepare(settings)``.

The source is cut into units of about ``chunk_bytes`` (byte ranges of a JSON Lines file, groups
of text files, Parquet row groups, batches of records of a Hugging Face dataset); worker
processes read and tokenize them, and the main process takes their results back in the units'
order, so the shards do not depend on the number of workers. At most ``2 * workers`` units are
in flight: memory does not grow with the corpus.

Documents go to the validation split whole: with ``val_fraction`` f, one document in each block
of ``round(1/f)`` consecutive ones, at a seeded position; with ``val_docs`` k, k documents drawn
by the seed (a first pass counts the documents). Each document's tokens are followed by the
end-of-text token. A shard closes at the end of the unit in which it reached ``shard_tokens``;
the validation shard closes with it. After each closed pair the progress is saved
(``.prepare.json``): an interrupted prepare continues from there when its command is run again,
after checking the finished shards' sha256. ``index.json`` is written last.

The character tokenizer's vocabulary is the source's characters (a first pass collects them)
plus one reserved end-of-text character, a control character the source does not hold.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llm_scratch.data.corpora import CORPORA, DEFAULT_TEXT_PROMPT, corpus_path, load_corpus
from llm_scratch.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    PREPARE_COMMAND,
    SPLITS,
    ShardWriter,
    disk_full_error,
    docs_name,
    read_index,
    sha256_file,
    shard_name,
    token_dtype,
    write_index,
)
from llm_scratch.data.tokenizers import BPETokenizer, CharTokenizer, Tokenizer
from llm_scratch.errors import Interrupted, Preempted, UserError
from llm_scratch.utils.io import atomic_write_text

STATE = ".prepare.json"
SHARD_RE = re.compile(r"(train|val)_\d{6}\.bin")
SHARD_TMP_RE = re.compile(r"\.(train|val)_\d{6}\.bin\.tmp")
# The reserved end-of-text character of the char tokenizer: the first of these the source lacks.
EOT_CHARS = ("\x03", "\x04", "\x1c", "\x1d", "\x1e", "\x1f", "\ufffe")
NAMED_SEPARATOR = "\n\n"  # the named corpora are one text each: their paragraphs are documents
MAX_SHOWN = 5
# Fault injection for the tests: a signal to the prepare after this many units ("20": SIGKILL,
# a hard crash; "20:TERM": SIGTERM).
KILL_AFTER_UNITS_ENV = "LLM_SCRATCH_PREPARE_KILL_AFTER_UNITS"


@dataclasses.dataclass
class PrepareSettings:
    """What ``training/prepare_data.py`` takes (configs/prepare_data.yaml documents each)."""

    source: str
    out: str
    tokenizer: str = "gpt2"
    text_field: str = "text"
    glob: str = "**/*.txt"
    hf_config: str | None = None
    hf_split: str = "train"
    doc_separator: str | None = None
    val_fraction: float = 0.01
    val_docs: int | None = None
    seed: int = 1337
    shard_tokens: int = 100_000_000
    chunk_bytes: int = 1 << 20
    workers: int | None = None
    strict: bool = False
    progress: str = "auto"
    data_dir: str | None = None
    cache_dir: str | None = None

    def check(self) -> None:
        def positive(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}.")

        if not isinstance(self.source, str) or not self.source:
            raise UserError("source is not set; give a file, a folder, a corpus name or hf:<name>.")
        if not isinstance(self.out, str) or not self.out:
            raise UserError("out is not set; give the folder to write the dataset to: out=<dir>.")
        positive("shard_tokens", self.shard_tokens)
        positive("chunk_bytes", self.chunk_bytes)
        positive("workers", self.workers, allow_none=True)
        positive("val_docs", self.val_docs, allow_none=True)
        if self.val_docs is None and not (
            isinstance(self.val_fraction, int | float)
            and not isinstance(self.val_fraction, bool)
            and 0 < self.val_fraction <= 0.5
        ):
            raise UserError(
                f"val_fraction must be a number in (0, 0.5], got {self.val_fraction!r}; or set "
                "val_docs=<count>."
            )
        if self.progress not in ("auto", "bar", "plain", "none"):
            raise UserError(f"progress must be auto, bar, plain or none, got {self.progress!r}.")
        if self.doc_separator == "":
            raise UserError("doc_separator is empty; give a separator, or null for none.")

    def identity(self) -> dict[str, Any]:
        """The settings the shards depend on (not workers, progress or where data is read)."""
        keys = ("tokenizer", "text_field", "glob", "hf_config", "hf_split", "doc_separator")
        keys += ("val_fraction", "val_docs", "seed", "shard_tokens", "chunk_bytes", "strict")
        d = {k: getattr(self, k) for k in keys}
        if self.val_docs is not None:
            d["val_fraction"] = None
        return d


# ----------------------------------------------------------------------------- sources
@dataclasses.dataclass
class Unit:
    """A piece of the source a worker reads and tokenizes on its own."""

    kind: str  # jsonl | jsonl_bytes | files | parquet | texts
    label: str  # the file (or dataset) it comes from, for messages
    nbytes: int  # source bytes, for the progress
    start: int = 0  # jsonl: byte offset; parquet: row group; jsonl_bytes: first line number
    end: int = 0
    paths: list[str] | None = None
    data: Any = None  # jsonl_bytes: bytes; texts: a list of str


class Source:
    """A corpus to prepare: its fingerprint, size and units, in one fixed order."""

    kind: str
    total_bytes: int | None = None
    default_separator: str | None = None

    def fingerprint(self) -> str:
        raise NotImplementedError

    def units(self, chunk_bytes: int) -> Iterator[Unit]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _stat_fingerprint(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        rel = p.relative_to(root).as_posix() if p != root else p.name
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class FileSource(Source):
    """Local files: text (one document per file), JSON Lines (.jsonl, .jsonl.gz) or Parquet."""

    def __init__(self, path: Path, glob: str, text_field: str) -> None:
        self.root = path
        self.text_field = text_field
        if path.is_file():
            files = [path]
            self.kind = _file_kind(path) or "text"
        else:
            try:
                candidates = sorted(p for p in path.glob(glob) if p.is_file())
            except (OSError, ValueError) as e:
                raise UserError(f"Cannot search {path} for {glob!r} ({e}).") from e
            if not candidates and glob == "**/*.txt":  # a folder of JSONL or Parquet files
                for pattern in ("**/*.jsonl", "**/*.jsonl.gz", "**/*.parquet"):
                    candidates = sorted(p for p in path.glob(pattern) if p.is_file())
                    if candidates:
                        break
            if not candidates:
                raise UserError(
                    f"Folder {path} holds no file matching {glob!r} (nor .jsonl, .jsonl.gz or "
                    ".parquet files); put the text there or set glob=<pattern>."
                )
            kinds = {_file_kind(p) or "text" for p in candidates}
            if len(kinds) > 1:
                raise UserError(
                    f"{path} mixes {' and '.join(sorted(kinds))} files matching {glob!r}; set "
                    "glob=<pattern> to select one kind."
                )
            files, self.kind = candidates, kinds.pop()
        self.files = files
        self.total_bytes = sum(p.stat().st_size for p in files)
        if self.kind == "parquet":
            self._check_parquet_fields()

    def describe(self) -> str:
        n = len(self.files)
        return f"{self.root} ({n} {self.kind} file{'s' if n != 1 else ''}, {self.total_bytes / 1e6:,.1f} MB)"

    def fingerprint(self) -> str:
        return _stat_fingerprint(self.root, self.files)

    def _check_parquet_fields(self) -> None:
        import pyarrow.parquet as pq

        for p in self.files:
            try:
                names = pq.ParquetFile(p).schema_arrow.names
            except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds
                raise UserError(f"{p} is not a readable Parquet file ({e}).") from e
            if self.text_field not in names:
                raise UserError(
                    f"{p} has no column {self.text_field!r}; its columns: {', '.join(names)}; "
                    "set text_field=<one of them>."
                )

    def units(self, chunk_bytes: int) -> Iterator[Unit]:
        if self.kind == "text":
            group: list[str] = []
            size = 0
            for p in self.files:
                group.append(str(p))
                size += p.stat().st_size
                if size >= chunk_bytes:
                    yield Unit("files", str(p), size, paths=group)
                    group, size = [], 0
            if group:
                yield Unit("files", group[-1], size, paths=group)
        elif self.kind == "parquet":
            import pyarrow.parquet as pq

            for p in self.files:
                meta = pq.ParquetFile(p).metadata
                for g in range(meta.num_row_groups):
                    yield Unit("parquet", str(p), meta.row_group(g).total_byte_size, start=g)
        elif self.kind == "jsonl":
            for p in self.files:
                yield from _jsonl_ranges(p, chunk_bytes)
        else:  # jsonl.gz: decompressed here, parsed by the workers
            for p in self.files:
                yield from _jsonl_gz_blocks(p, chunk_bytes)


def _file_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    if name.endswith(".parquet"):
        return "parquet"
    return None


def _jsonl_ranges(path: Path, chunk_bytes: int) -> Iterator[Unit]:
    """Byte ranges of about ``chunk_bytes`` that end at a line's end."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = 0
        while start < size:
            f.seek(min(start + chunk_bytes, size))
            f.readline()
            end = min(f.tell(), size)
            yield Unit("jsonl", str(path), end - start, start=start, end=end)
            start = end


def _jsonl_gz_blocks(path: Path, chunk_bytes: int) -> Iterator[Unit]:
    line = 1
    try:
        with gzip.open(path, "rb") as f:
            rest = b""
            while True:
                block = f.read(chunk_bytes)
                data = rest + block
                if not block:
                    if data:
                        yield Unit("jsonl_bytes", str(path), len(data), start=line, data=data)
                    return
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
                yield Unit("jsonl_bytes", str(path), cut, start=line, data=data[:cut])
                line += data.count(b"\n", 0, cut)
                rest = data[cut:]
    except (OSError, EOFError) as e:
        raise UserError(f"Cannot read {path} as gzip ({e}).") from e


class TextsSource(Source):
    """Texts the main process reads (a named corpus, a Hugging Face dataset), sent in batches."""

    def __init__(self, label: str, fingerprint: str, texts: Callable[[], Iterator[str]]) -> None:
        self.label = label
        self._fingerprint = fingerprint
        self._texts = texts
        self.kind = "texts"

    def describe(self) -> str:
        return self.label

    def fingerprint(self) -> str:
        return self._fingerprint

    def units(self, chunk_bytes: int) -> Iterator[Unit]:
        batch: list[str] = []
        size = 0
        for text in self._texts():
            batch.append(text)
            size += len(text)
            if size >= chunk_bytes:
                yield Unit("texts", self.label, size, data=batch)
                batch, size = [], 0
        if batch:
            yield Unit("texts", self.label, size, data=batch)


def _hf_source(spec: str, settings: PrepareSettings) -> TextsSource:
    """``hf:<name or path>``, or a folder written by ``Dataset.save_to_disk``: streamed."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            "A Hugging Face dataset needs the datasets package: pip install 'llm_scratch[data]'."
        ) from None
    from llm_scratch import hub

    path = Path(spec).expanduser()
    field, split = settings.text_field, settings.hf_split
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if path.is_dir() and (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds
            raise UserError(f"Cannot load the dataset saved in {path} ({e}).") from e
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise UserError(
                    f"{path} has no split {split!r}; its splits: {', '.join(ds)}; set hf_split=."
                )
            ds = ds[split]
        fingerprint = getattr(ds, "_fingerprint", None) or _stat_fingerprint(
            path, sorted(p for p in path.rglob("*") if p.is_file())
        )
        columns = ds.column_names
        stream = ds.to_iterable_dataset()
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        if not Path(spec).expanduser().exists() and not offline and not hub.reachable():
            raise UserError(
                f"source=hf:{spec}: cannot reach the Hugging Face hub (no network?); connect to "
                "the internet, set HF_HUB_OFFLINE=1 to use a copy in the Hugging Face cache, or "
                "give a local copy: source=<folder written by save_to_disk, or of its files>."
            )
        try:
            stream = datasets.load_dataset(spec, settings.hf_config, split=split, streaming=True)
        except Exception as e:  # noqa: BLE001
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(
                f"Cannot load the Hugging Face dataset {spec!r} ({reason[:300]})."
            ) from e
        info = getattr(stream, "info", None)
        fingerprint = hashlib.sha256(
            json.dumps(
                [
                    spec,
                    settings.hf_config,
                    split,
                    getattr(info, "version", None) and str(info.version),
                ]
            ).encode()
        ).hexdigest()[:16]
        columns = list(getattr(stream, "column_names", None) or [])
    if columns and field not in columns:
        raise UserError(
            f"The dataset {spec} has no field {field!r}; its fields: {', '.join(columns)}; set "
            "text_field=<one of them>."
        )

    def texts() -> Iterator[str]:
        for i, row in enumerate(stream):
            if field not in row:
                raise UserError(
                    f"Record {i} of {spec} has no field {field!r}; its fields: "
                    f"{', '.join(row)}; set text_field=<one of them>."
                )
            value = row[field]
            if value is not None and not isinstance(value, str):
                raise UserError(
                    f"Record {i} of {spec}: field {field!r} is not text ({type(value).__name__})."
                )
            yield value or ""

    return TextsSource(f"{spec} (Hugging Face dataset, split {split})", fingerprint, texts)


def open_source(settings: PrepareSettings) -> Source:
    spec = settings.source
    if spec in CORPORA:
        path = corpus_path(spec, settings.data_dir, settings.cache_dir)
        info = CORPORA[spec]

        def texts() -> Iterator[str]:
            yield load_corpus(spec, settings.data_dir, settings.cache_dir, download=False)

        source = TextsSource(
            f"{spec} ({info.description}, {path.stat().st_size:,} bytes)", info.sha256[:16], texts
        )
        source.default_separator = NAMED_SEPARATOR
        return source
    if spec.startswith("hf:"):
        return _hf_source(spec[3:], settings)
    path = Path(spec).expanduser()
    if path.is_dir() and (
        (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    ):
        return _hf_source(spec, settings)
    if not path.exists():
        raise UserError(
            f"source={spec}: no such file or folder, and not a corpus name ({', '.join(CORPORA)}); "
            "give a text, JSONL or Parquet file or folder, a corpus name, or hf:<dataset>."
        )
    return FileSource(path, settings.glob, settings.text_field)


# ----------------------------------------------------------------------------- the workers
class RecordError(Exception):
    """A bad record in a unit: (file, unit start, line within the unit, what is wrong).

    The main process turns it into a UserError naming the file's line number."""


_W: dict[str, Any] = {}  # the worker's settings (set by _init_worker)


def _init_worker(config: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the main process's handler (fork)
    _W.clear()
    _W.update(config)
    tok = config.get("tokenizer")
    if tok is None:
        return
    if tok["type"] == "tiktoken":
        import tiktoken

        enc = tiktoken.get_encoding(tok["encoding"])
        if hasattr(enc, "encode_to_numpy"):  # no list of Python ints in between: 15% faster
            # nothing allowed, nothing disallowed: special-token text is ordinary text, as in
            # encode_ordinary (the same ids)
            _W["encode_np"] = lambda text: enc.encode_to_numpy(text, disallowed_special=())
        else:
            _W["encode"] = enc.encode_ordinary
    else:
        codepoints = np.array([ord(c) for c in tok["chars"]], dtype=np.uint32)
        _W["codepoints"] = codepoints


def _encode(text: str) -> np.ndarray:
    dtype = _W["dtype"]
    if "encode_np" in _W:
        return _W["encode_np"](text).astype(dtype)
    if "encode" in _W:
        return np.array(_W["encode"](text), dtype=dtype)
    codepoints = _W["codepoints"]
    cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    ids = np.searchsorted(codepoints, cps)
    ids[ids >= len(codepoints)] = 0
    if not np.array_equal(codepoints[ids], cps):  # the vocabulary pass saw another text
        raise UserError("The source changed while it was being prepared; run the command again.")
    return ids.astype(dtype)


def _strict_refusal(label: str, why: str) -> UserError:
    return UserError(
        f"{label} is not UTF-8 ({why}); convert it to UTF-8, or set strict=false to skip it."
    )


def _unit_texts(unit: Unit, stats: dict[str, Any]) -> Iterator[str]:
    """The records of a unit, in order; each a text ("" for an empty one)."""
    field, strict = _W["text_field"], _W["strict"]
    if unit.kind in ("jsonl", "jsonl_bytes"):
        if unit.kind == "jsonl":
            with open(unit.label, "rb") as f:
                f.seek(unit.start)
                data = f.read(unit.end - unit.start)
        else:
            data = unit.data
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for i, line in enumerate(lines):
            if not line.strip():
                continue  # a blank line holds no record
            try:
                record = json.loads(line)
            except UnicodeDecodeError as e:
                if strict:
                    raise RecordError(
                        unit.label, unit.kind, unit.start, i, f"not UTF-8 ({e.reason})"
                    ) from None
                stats["non_utf8"] += 1
                stats["non_utf8_names"].append(f"{unit.label}:+{i}")
                continue
            except json.JSONDecodeError as e:
                raise RecordError(
                    unit.label, unit.kind, unit.start, i, f"not JSON ({e.msg})"
                ) from None
            except RecursionError:
                raise RecordError(
                    unit.label, unit.kind, unit.start, i, "nested too deeply to read as JSON"
                ) from None
            except ValueError as e:  # e.g. an integer of more digits than Python converts
                raise RecordError(
                    unit.label, unit.kind, unit.start, i, f"not readable as JSON ({e})"
                ) from None
            if not isinstance(record, dict) or field not in record:
                fields = (
                    ", ".join(record) if isinstance(record, dict) else f"a {type(record).__name__}"
                )
                raise RecordError(
                    unit.label, unit.kind, unit.start, i,
                    f"no field {field!r} (it has: {fields or 'no fields'}); set text_field=<its name>",
                )  # fmt: skip
            value = record[field]
            if value is not None and not isinstance(value, str):
                raise RecordError(
                    unit.label,
                    unit.kind,
                    unit.start,
                    i,
                    f"field {field!r} is not text ({type(value).__name__})",
                )
            yield value or ""
    elif unit.kind == "files":
        for path in unit.paths or []:
            raw = Path(path).read_bytes()
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if strict:
                    raise _strict_refusal(path, f"{e.reason} at byte {e.start}") from None
                stats["non_utf8"] += 1
                stats["non_utf8_names"].append(path)
    elif unit.kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(unit.label).read_row_group(unit.start, columns=[field])
        for value in table.column(0).to_pylist():
            if value is not None and not isinstance(value, str):
                raise UserError(
                    f"{unit.label}: column {field!r} is not text ({type(value).__name__})."
                )
            yield value or ""
    else:
        yield from unit.data


def _unit_docs(unit: Unit, stats: dict[str, Any]) -> Iterator[str]:
    """The non-empty documents of a unit, in order (empty ones counted in ``stats``)."""
    sep = _W["separator"]
    for text in _unit_texts(unit, stats):
        for doc in text.split(sep) if sep else (text,):
            if doc.strip():
                yield doc
            else:
                stats["empty"] += 1


def _new_stats() -> dict[str, Any]:
    return {"empty": 0, "non_utf8": 0, "non_utf8_names": []}


def _scan_unit(unit: Unit) -> tuple[int, str, dict[str, Any]]:
    """First pass: the unit's document count and its distinct characters (sorted)."""
    stats = _new_stats()
    chars: set[str] = set()
    n = 0
    for doc in _unit_docs(unit, stats):
        n += 1
        if _W["want_chars"]:
            chars.update(doc)
    return n, "".join(sorted(chars)), stats


def _tokenize_unit(unit: Unit) -> dict[str, Any]:
    """The unit's tokens (each document followed by end-of-text), per-document token and UTF-8
    byte counts."""
    stats = _new_stats()
    eot = _W["eot"]
    pieces, lengths, utf8 = [], [], []
    for doc in _unit_docs(unit, stats):
        ids = _encode(doc)
        pieces.append(ids)
        pieces.append(eot)
        lengths.append(ids.size + 1)
        utf8.append(len(doc.encode("utf-8")))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=_W["dtype"])
    return {
        "tokens": tokens,
        "lengths": np.array(lengths, dtype=np.int64),
        "utf8": np.array(utf8, dtype=np.int64),
        "nbytes": unit.nbytes,
        "stats": stats,
    }


def _line_error(error: RecordError) -> UserError:
    label, kind, start, i, what = error.args
    if kind == "jsonl":  # the line number: the lines before the unit's byte range, counted now
        line = 1 + i
        with open(label, "rb") as f:
            remaining = start
            while remaining > 0:
                block = f.read(min(remaining, 1 << 22))
                if not block:
                    break
                line += block.count(b"\n")
                remaining -= len(block)
    else:
        line = start + i
    return UserError(f"{label}, line {line}: {what}.")


def _ordered_map(
    fn: Callable[[Unit], Any], units: Iterator[Unit], pool: Any, in_flight: int
) -> Iterator[Any]:
    """``fn`` over ``units`` in order; with a pool, at most ``in_flight`` units at a time."""
    try:
        if pool is None:
            for unit in units:
                yield fn(unit)
            return
        pending: collections.deque = collections.deque()
        for unit in units:
            pending.append(pool.apply_async(fn, (unit,)))
            if len(pending) >= in_flight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    except RecordError as e:
        raise _line_error(e) from None


# ----------------------------------------------------------------------------- progress
class Progress:
    """A bar (documents, tokens, MB/s, ETA) on a terminal; a plain line every ``interval`` s
    otherwise; nothing with ``mode="none"``."""

    def __init__(
        self, mode: str, total_bytes: int | None, stream: Any = None, interval: float = 10.0
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode, self.total, self.interval = mode, total_bytes, interval
        self.bytes = self.docs = self.tokens = 0
        self.start = self._last = time.perf_counter()
        self._bar = None
        if mode == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]prepare"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[docs]:,} docs"),
                TextColumn("{task.fields[tokens]:,} tokens"),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._task = self._bar.add_task("prepare", total=total_bytes, docs=0, tokens=0)
            self._bar.start()

    def update(self, nbytes: int, docs: int, tokens: int) -> None:
        self.bytes += nbytes
        self.docs += docs
        self.tokens += tokens
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes, docs=self.docs, tokens=self.tokens)
        elif self.mode == "plain" and time.perf_counter() - self._last >= self.interval:
            self._last = time.perf_counter()
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.bytes / elapsed
        done = f"{self.bytes / 1e6:,.1f}"
        if self.total:
            done += f"/{self.total / 1e6:,.1f} MB ({100 * self.bytes / self.total:.0f}%)"
            eta = (self.total - self.bytes) / rate if rate > 0 else 0
            tail = f", ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        else:
            done += " MB"
            tail = ""
        return (
            f"prepare: {done}, {self.docs:,} docs, {self.tokens:,} tokens, "
            f"{rate / 1e6:.1f} MB/s{tail}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# ----------------------------------------------------------------------------- the validation split
def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class ValSelector:
    """Which documents (by their index among the kept documents) go to the validation split."""

    def __init__(self, settings: PrepareSettings, total_docs: int | None) -> None:
        self.seed = np.uint64(settings.seed & 0xFFFFFFFFFFFFFFFF)
        if settings.val_docs is not None:
            assert total_docs is not None
            if settings.val_docs >= total_docs:
                raise UserError(
                    f"val_docs={settings.val_docs} but the source holds {total_docs} documents; "
                    "keep some for training: a smaller val_docs."
                )
            rng = np.random.default_rng(settings.seed)
            self.chosen = np.sort(rng.choice(total_docs, settings.val_docs, replace=False))
            self.period = 0
        else:
            self.chosen = None
            self.period = max(2, round(1 / settings.val_fraction))

    def __call__(self, index: np.ndarray) -> np.ndarray:
        if self.chosen is not None:
            return np.isin(index, self.chosen)
        period = np.uint64(self.period)
        block = index.astype(np.uint64) // period
        with np.errstate(over="ignore"):
            position = _splitmix64(block ^ _splitmix64(np.full_like(block, self.seed))) % period
        return index.astype(np.uint64) % period == position


# ----------------------------------------------------------------------------- the output folder
def _differences(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    return [
        f"{k}={have.get(k)!r} (asked: {want.get(k)!r})"
        for k in sorted(set(want) | set(have))
        if want.get(k) != have.get(k)
    ]


def _check_out_dir(out: Path, identity: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """``("new", None)``, ``("done", index)`` or ``("resume", state)``; refuses a folder that
    holds something else, or a dataset of other settings."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file; give a folder for the dataset.")
    if (out / INDEX).is_file():
        index = read_index(out)
        diff = _differences(
            identity,
            {**index.get("settings", {}), "source": index.get("source", {}).get("fingerprint")},
        )
        if diff:
            raise UserError(
                f"out={out} holds a dataset prepared with other settings: {'; '.join(diff)}; "
                "choose another out= or delete that folder."
            )
        return "done", index
    if (out / STATE).is_file():
        try:
            state = json.loads((out / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(
                f"Cannot read {out / STATE} ({e}); delete the folder {out} and prepare again."
            ) from e
        diff = _differences(identity, state.get("identity", {}))
        if not state.get("checkpoints"):  # nothing finished: start afresh, whatever the settings
            for path in out.iterdir():
                if path.name == STATE or path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink()
            if not any(out.iterdir()):
                return "new", None
        if diff:
            raise UserError(
                f"out={out} holds an unfinished preparation with other settings: {'; '.join(diff)}; "
                "run it with its own settings to finish it, choose another out=, or delete that folder."
            )
        return "resume", state
    if out.is_dir() and any(out.iterdir()):
        raise UserError(
            f"out={out} is not empty and holds no dataset; give a new or empty folder for the dataset."
        )
    return "new", None


class _SplitOutput:
    """One split's shards, its document offsets file and its counts."""

    def __init__(self, out: Path, split: str, dtype: np.dtype) -> None:
        self.out, self.split, self.dtype = out, split, dtype
        self.shards: list[dict[str, Any]] = []
        self.tokens = self.documents = self.utf8 = 0
        self.writer: ShardWriter | None = None
        self.docs_tmp = out / f".{docs_name(split)}.tmp"
        self._docs = None

    def open(self, restored: dict[str, Any] | None) -> None:
        if restored:
            self.shards = list(restored["shards"])
            self.tokens, self.documents, self.utf8 = (
                restored["tokens"],
                restored["documents"],
                restored["utf8"],
            )
        mode = "r+b" if restored and self.docs_tmp.exists() else "wb"
        self._docs = open(self.docs_tmp, mode)  # noqa: SIM115 - open across calls
        self._docs.truncate(8 * self.documents)
        self._docs.seek(8 * self.documents)

    def append(self, tokens: np.ndarray, lengths: np.ndarray, utf8: np.ndarray) -> None:
        if lengths.size == 0:
            return
        if self.writer is None:
            self.writer = ShardWriter(
                self.out / shard_name(self.split, len(self.shards)), self.dtype
            )
        starts = self.tokens + np.concatenate(([0], np.cumsum(lengths)[:-1]))
        try:
            self._docs.write(starts.astype("<i8").tobytes())
        except OSError as e:
            raise disk_full_error(self.docs_tmp, e) from e
        self.writer.append(tokens)
        self.tokens += int(tokens.size)
        self.documents += int(lengths.size)
        self.utf8 += int(utf8.sum())

    @property
    def open_tokens(self) -> int:
        return self.writer.count if self.writer is not None else 0

    def close_shard(self) -> None:
        if self.writer is not None:
            self.shards.append(self.writer.close())
            self.writer = None
        try:
            self._docs.flush()
            os.fsync(self._docs.fileno())
        except OSError as e:
            raise disk_full_error(self.docs_tmp, e) from e

    def state(self) -> dict[str, Any]:
        return {
            "shards": list(self.shards),
            "tokens": self.tokens,
            "documents": self.documents,
            "utf8": self.utf8,
        }

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        if self._docs is not None:
            with contextlib.suppress(OSError):
                self._docs.close()

    def finish(self) -> dict[str, Any]:
        self._docs.close()
        final = self.out / docs_name(self.split)
        os.replace(self.docs_tmp, final)
        return {
            "shards": self.shards,
            "tokens": self.tokens,
            "documents": self.documents,
            "utf8_bytes": self.utf8,
            "docs": {
                "name": final.name,
                "count": self.documents,
                "bytes": final.stat().st_size,
                "sha256": sha256_file(final),
            },
        }


def _verified_checkpoints(out: Path, state: dict[str, Any], log: Callable[[str], None]) -> int:
    """How many of the saved checkpoints have all their shards whole (size and sha256)."""
    good = 0
    for cp in state.get("checkpoints", []):
        ok = True
        for split in SPLITS:
            entry = cp["new"].get(split)
            if entry is None:
                continue
            path = out / entry["name"]
            if (
                not path.is_file()
                or path.stat().st_size != entry["bytes"]
                or sha256_file(path) != entry["sha256"]
            ):
                log(f"prepare: shard {entry['name']} is damaged or missing: it is made again")
                ok = False
        if not ok:
            break
        good += 1
    return good


# ----------------------------------------------------------------------------- prepare
def _command(settings: PrepareSettings) -> str:
    parts = [PREPARE_COMMAND, f"source={settings.source}", f"out={settings.out}"]
    defaults = PrepareSettings(source="", out="")
    for key, value in settings.identity().items():
        if value != getattr(defaults, key) and not (key == "val_fraction" and value is None):
            parts.append(f"{key}={'null' if value is None else value}")
    return " ".join(parts)


def _build_tokenizer(name: str, chars: str | None) -> tuple[Tokenizer, int]:
    """The tokenizer and its end-of-text id."""
    if name == "char":
        assert chars is not None
        if not chars:
            raise UserError("The source holds no text; nothing to prepare.")
        eot_char = next((c for c in EOT_CHARS if c not in chars), None)
        if eot_char is None:
            raise UserError(
                "The source uses every reserved end-of-text character; use tokenizer=gpt2."
            )
        tok = CharTokenizer(chars + eot_char)
        return tok, tok.chars.index(eot_char)
    tok = BPETokenizer(name)
    if tok.eos_id is None:
        raise UserError(
            f"The tokenizer {name!r} has no <|endoftext|> token to separate documents; use gpt2."
        )
    return tok, tok.eos_id


def _worker_config(
    settings: PrepareSettings,
    separator: str | None,
    tokenizer: Tokenizer | None = None,
    eot: int = 0,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "text_field": settings.text_field,
        "strict": settings.strict,
        "separator": separator,
        "want_chars": settings.tokenizer == "char",
    }
    if tokenizer is not None:
        config.update(
            tokenizer=tokenizer.to_dict(),
            eot=np.array([eot], dtype=token_dtype(tokenizer.vocab_size)),
            dtype=token_dtype(tokenizer.vocab_size),
        )
    return config


def _pool(workers: int, config: dict[str, Any]) -> Any:
    if workers <= 1:
        _init_worker(config)
        return None
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ctx.Pool(workers, initializer=_init_worker, initargs=(config,))


_SIGTERM_SEEN: list[int] = []


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the prepare as Ctrl-C does (the finished shards stay for a resume)."""

    def handler(signum: int, frame: Any) -> None:
        _SIGTERM_SEEN.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def prepare(settings: PrepareSettings, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Prepare ``settings.source`` into shards in ``settings.out``; the index written."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    settings.check()
    workers = settings.workers or os.cpu_count() or 1
    source = open_source(settings)
    out = Path(settings.out).expanduser()
    identity = {**settings.identity(), "source": source.fingerprint()}
    status, found = _check_out_dir(out, identity)
    if status == "done":
        log(
            f"prepare: {out} already holds this dataset ({found['splits']['train']['tokens']:,} training tokens); nothing to do"
        )
        return found
    separator = (
        settings.doc_separator if settings.doc_separator is not None else source.default_separator
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"Cannot create out={out} ({e.strerror or e}).") from e
    started = time.perf_counter()
    log(f"prepare: {source.describe()} -> {out}, {workers} worker(s)")
    state = found
    if state is None:
        # the first pass (documents count for val_docs, the characters for tokenizer=char)
        chars, total_docs = None, None
        if settings.tokenizer == "char" or settings.val_docs is not None:
            log(
                "prepare: first pass over the source ("
                + ("characters" if settings.tokenizer == "char" else "documents")
                + ")"
            )
            pool = _pool(workers, _worker_config(settings, separator))
            try:
                seen: set[str] = set()
                total_docs = 0
                for n, unit_chars, _ in _ordered_map(
                    _scan_unit, source.units(settings.chunk_bytes), pool, 2 * workers
                ):
                    total_docs += n
                    seen.update(unit_chars)
                chars = "".join(sorted(seen))
            finally:
                if pool is not None:
                    pool.terminate()
                    pool.join()
        tokenizer, eot = _build_tokenizer(settings.tokenizer, chars)
        state = {
            "identity": identity,
            "tokenizer": tokenizer.to_dict(),
            "eot_id": eot,
            "total_docs": total_docs,
            "checkpoints": [],
        }
        _write_state(out, state)
    else:
        from llm_scratch.data.tokenizers import tokenizer_from_dict

        tokenizer, eot = tokenizer_from_dict(state["tokenizer"]), int(state["eot_id"])
    return _tokenize(settings, source, out, state, tokenizer, eot, separator, workers, started, log)


def _write_state(out: Path, state: dict[str, Any]) -> None:
    try:
        atomic_write_text(out / STATE, json.dumps(state) + "\n")
    except OSError as e:
        raise disk_full_error(out / STATE, e) from e


def _tokenize(
    settings: PrepareSettings,
    source: Source,
    out: Path,
    state: dict[str, Any],
    tokenizer: Tokenizer,
    eot: int,
    separator: str | None,
    workers: int,
    started: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    dtype = token_dtype(tokenizer.vocab_size)
    # resume: keep the checkpoints whose shards are whole, drop everything after them
    good = _verified_checkpoints(out, state, log)
    state["checkpoints"] = state["checkpoints"][:good]
    last = state["checkpoints"][-1] if good else None
    keep = {e["name"] for cp in state["checkpoints"] for e in cp["new"].values() if e}
    for s in SPLITS:  # a run stopped while finishing: its offsets file goes back in place
        final, tmp = out / docs_name(s), out / f".{docs_name(s)}.tmp"
        if final.is_file() and not tmp.exists():
            os.replace(final, tmp)
        needed = 8 * last["splits"][s]["documents"] if last else 0
        if tmp.exists() and tmp.stat().st_size < needed or needed and not tmp.exists():
            log("prepare: the document offsets are incomplete: preparing from the start")
            state["checkpoints"], last, keep = [], None, set()
    for path in out.iterdir():
        is_shard = SHARD_RE.fullmatch(path.name) is not None
        if is_shard and path.name not in keep or SHARD_TMP_RE.fullmatch(path.name):
            path.unlink()
    if last is not None:
        log(
            f"prepare: continuing after {sum(len(last['splits'][s]['shards']) for s in SPLITS)} finished shard(s), checked"
        )
    outputs = {s: _SplitOutput(out, s, dtype) for s in SPLITS}
    for s in SPLITS:
        outputs[s].open(last["splits"][s] if last else None)
    first_unit = last["unit"] if last else 0
    docs_seen = last["docs_seen"] if last else 0
    skipped = dict(last["skipped"]) if last else {"empty": 0, "non_utf8": 0, "non_utf8_names": []}
    selector = ValSelector(settings, state.get("total_docs"))
    # the tests' fault injection: "<units>" (SIGKILL) or "<units>:TERM"
    kill_after, _, kill_signal = os.environ.get(KILL_AFTER_UNITS_ENV, "0").partition(":")
    kill_after = int(kill_after or 0)
    kill_with = signal.SIGTERM if kill_signal == "TERM" else signal.SIGKILL

    progress = Progress("none", None)
    pool = None
    units_done = first_unit
    try:
        with _sigterm_as_interrupt():
            pool = _pool(workers, _worker_config(settings, separator, tokenizer, eot))
            units = source.units(settings.chunk_bytes)
            total = source.total_bytes
            for _ in range(first_unit):  # done before the interruption
                unit = next(units)
                total = None if total is None else total - unit.nbytes
            progress = Progress(settings.progress, total)
            for result in _ordered_map(_tokenize_unit, units, pool, 2 * workers):
                lengths = result["lengths"]
                index = docs_seen + np.arange(lengths.size, dtype=np.int64)
                is_val = selector(index)
                token_is_val = np.repeat(is_val, lengths)
                for split, docs_mask, tok_mask in (
                    ("train", ~is_val, ~token_is_val),
                    ("val", is_val, token_is_val),
                ):
                    outputs[split].append(
                        result["tokens"][tok_mask], lengths[docs_mask], result["utf8"][docs_mask]
                    )
                docs_seen += int(lengths.size)
                for k in ("empty", "non_utf8"):
                    skipped[k] += result["stats"][k]
                skipped["non_utf8_names"] = (
                    skipped["non_utf8_names"] + result["stats"]["non_utf8_names"]
                )[:MAX_SHOWN]
                units_done += 1
                progress.update(result["nbytes"], int(lengths.size), int(result["tokens"].size))
                if outputs["train"].open_tokens >= settings.shard_tokens:
                    _checkpoint(out, state, outputs, units_done, docs_seen, skipped)
                if kill_after and units_done >= kill_after:
                    kill_after = 0
                    os.kill(os.getpid(), kill_with)
            if any(o.open_tokens for o in outputs.values()):
                _checkpoint(out, state, outputs, units_done, docs_seen, skipped)
    except KeyboardInterrupt:
        progress.close()
        for o in outputs.values():
            o.abort()
        if pool is not None:
            pool.terminate()
            pool.join()
        finished = sum(len(cp["new"]) for cp in state["checkpoints"])
        stopped = Preempted if _SIGTERM_SEEN else Interrupted  # exit status 143 or 130
        raise stopped(
            f"Interrupted by {'SIGTERM' if _SIGTERM_SEEN else 'Ctrl-C'}; {finished} finished "
            f"shard(s) kept in {out}: run the same command to continue."
        ) from None
    except BaseException:
        progress.close()
        for o in outputs.values():
            o.abort()
        if pool is not None:
            pool.terminate()
            pool.join()
        if not state["checkpoints"]:  # nothing worth continuing: leave the folder as it was
            _remove_unfinished(out)
        raise
    progress.close()
    if pool is not None:
        pool.close()
        pool.join()

    if outputs["val"].documents == 0:
        for o in outputs.values():
            o.abort()
        how = (
            f"val_fraction={settings.val_fraction} takes one in {selector.period}"
            if settings.val_docs is None
            else f"val_docs={settings.val_docs}"
        )
        raise UserError(
            f"No document went to the validation split ({docs_seen} document(s); {how}); raise "
            "val_fraction, or set doc_separator to cut the text into more documents."
        )
    if outputs["train"].documents == 0:
        raise UserError("No document went to the training split; lower val_fraction or val_docs.")
    elapsed = time.perf_counter() - started
    splits = {s: outputs[s].finish() for s in SPLITS}
    prompt = CORPORA[settings.source].prompt if settings.source in CORPORA else DEFAULT_TEXT_PROMPT
    if isinstance(tokenizer, CharTokenizer) and not set(prompt) <= set(tokenizer.chars):
        prompt = next(c for c in tokenizer.chars if c.isalnum() or c == " ")
    index = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "tokenizer": tokenizer.to_dict(),
        "tokenizer_name": tokenizer.name,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        "eot_id": eot,
        "prompt": prompt,
        "source": {
            "spec": settings.source,
            "description": source.describe(),
            "fingerprint": identity_fp(state),
        },
        "settings": {k: v for k, v in state["identity"].items() if k != "source"},
        "splits": splits,
        "skipped": {
            "empty_documents": skipped["empty"],
            "non_utf8": skipped["non_utf8"],
            "non_utf8_examples": skipped["non_utf8_names"],
        },
        "command": _command(settings),
        "prepare_seconds": round(elapsed, 3),
    }
    write_index(out, index)
    with contextlib.suppress(FileNotFoundError):
        (out / STATE).unlink()
    index = read_index(out)
    _log_summary(index, source, elapsed, out, log)
    return index


def _remove_unfinished(out: Path) -> None:
    for path in out.iterdir():
        if path.name == STATE or path.name.startswith(".") and path.name.endswith(".tmp"):
            path.unlink()
    with contextlib.suppress(OSError):
        out.rmdir()  # only if empty: it was made for this dataset


def identity_fp(state: dict[str, Any]) -> str:
    return state["identity"]["source"]


def _checkpoint(
    out: Path,
    state: dict[str, Any],
    outputs: dict[str, _SplitOutput],
    unit: int,
    docs_seen: int,
    skipped: dict[str, Any],
) -> None:
    new = {}
    for s, o in outputs.items():
        had = len(o.shards)
        o.close_shard()
        if len(o.shards) > had:
            new[s] = o.shards[-1]
    state["checkpoints"].append(
        {
            "unit": unit,
            "docs_seen": docs_seen,
            "skipped": dict(skipped),
            "new": new,
            "splits": {s: o.state() for s, o in outputs.items()},
        }
    )
    _write_state(out, state)


def _log_summary(
    index: dict[str, Any], source: Source, elapsed: float, out: Path, log: Callable[[str], None]
) -> None:
    train, val = index["splits"]["train"], index["splits"]["val"]
    skipped = index["skipped"]
    nbytes = source.total_bytes or (train["utf8_bytes"] + val["utf8_bytes"])
    tokens = train["tokens"] + val["tokens"]
    extra = ""
    if skipped["empty_documents"] or skipped["non_utf8"]:
        extra = f"; skipped {skipped['empty_documents']:,} empty document(s), {skipped['non_utf8']:,} not UTF-8"
        if skipped["non_utf8_examples"]:
            extra += f" (e.g. {', '.join(skipped['non_utf8_examples'])})"
    log(
        f"prepare: train {train['tokens']:,} tokens ({train['documents']:,} docs, "
        f"{len(train['shards'])} shard(s)), val {val['tokens']:,} tokens ({val['documents']:,} docs){extra}\n"
        f"prepare: {nbytes / 1e6:,.1f} MB in {elapsed:.1f} s: {nbytes / 1e6 / max(elapsed, 1e-9):.1f} MB/s, "
        f"{tokens / max(elapsed, 1e-9) / 1e6:.2f} M tokens/s; dataset {index['fingerprint']} in {out}\n"
        f"  train on it: python training/run_experiment.py data=shards data.path={out}"
    )
