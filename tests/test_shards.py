"""Prepared token shards (training/prepare_data.py, data=shards) on small local fixtures: each
source kind, the format, byte-identical shards whatever the number of workers, continuing after
SIGKILL, bounded work in flight, every refused input, and training from the shards (windows,
alignment to documents, exact resume, disjoint DDP ranks, summary.json)."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from llm_scratch.data import prepare as prep
from llm_scratch.data.prepare import PrepareSettings, prepare
from llm_scratch.data.shard_datamodule import ShardDataModule, TokenStream, _document_starts
from llm_scratch.data.shards import (
    HEADER_BYTES,
    ShardWriter,
    open_shard,
    read_header,
    read_index,
    sha256_file,
)
from llm_scratch.data.tokenizers import BPETokenizer, tokenizer_from_dict
from llm_scratch.errors import UserError
from llm_scratch.train.job import train
from tests.helpers import FAST, REPO, by_step, compose_config, run_cli

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "at",
    "by",
    "this",
    "had",
    "not",
    "are",
    "but",
    "from",
]
WORDS += ["naïve", "café", "中文", "señor", "def", "return", "x", "=", "(", ")", ":", "\n"]


def make_docs(n: int, seed: int = 0, empty_every: int = 0) -> list[str]:
    """``n`` documents of random words (some non-ASCII); every ``empty_every``-th one blank."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        if empty_every and i % empty_every == empty_every - 1:
            docs.append("  \n")
            continue
        words = rng.choice(WORDS, size=int(rng.integers(5, 60)))
        docs.append(f"doc {i}: " + " ".join(words))
    return docs


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, field: d}, ensure_ascii=False) + "\n")
    return path


def settings(source: Path | str, out: Path, **kw) -> PrepareSettings:
    defaults = {"workers": 1, "progress": "none", "val_fraction": 0.1}
    return PrepareSettings(source=str(source), out=str(out), **{**defaults, **kw})


def run_prepare(source: Path | str, out: Path, **kw) -> dict:
    return prepare(settings(source, out, **kw), log=lambda _: None)


def split_tokens(out: Path, split: str) -> np.ndarray:
    index = read_index(out)
    stream = TokenStream(out, index["splits"][split], index["dtype"])
    return stream.slice(0, len(stream))


def documents(out: Path, split: str) -> list[list[int]]:
    """The split's documents as token lists (each ending with its end-of-text token)."""
    tokens = split_tokens(out, split)
    starts = np.fromfile(out / f"{split}_docs.bin", dtype="<i8")
    ends = np.append(starts[1:], len(tokens))
    return [tokens[s:e].tolist() for s, e in zip(starts, ends, strict=True)]


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix == ".bin"}


@pytest.fixture(scope="module")
def gpt2(shared_data_dir) -> BPETokenizer:
    return BPETokenizer("gpt2")


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, list[str]]:
    docs = make_docs(200)
    docs[3] += " <|endoftext|> in a document is text, not the end of it"
    return write_jsonl(tmp_path / "corpus.jsonl", docs), docs


# ============================================================================ the format
def test_a_shard_has_its_header_then_its_tokens_and_appears_only_when_whole(tmp_path):
    path = tmp_path / "train_000000.bin"
    writer = ShardWriter(path, np.dtype(np.uint32))
    writer.append(np.arange(70_000, 70_010, dtype=np.uint32))
    assert not path.exists() and writer.tmp.exists()  # under a temporary name until closed
    writer.append(np.array([5], dtype=np.uint32))
    entry = writer.close()
    assert not writer.tmp.exists()
    assert read_header(path) == (4, 11)
    assert entry == {
        "name": path.name,
        "tokens": 11,
        "bytes": HEADER_BYTES + 44,
        "sha256": sha256_file(path),
    }
    raw = np.fromfile(path, dtype="<i4", count=5)
    assert raw.tolist()[1:] == [1, 4, 11, 0]  # version, itemsize, count (low, high)
    tokens = open_shard(path, np.dtype(np.uint32), 11)
    assert tokens.tolist() == list(range(70_000, 70_010)) + [5]


def test_jsonl_documents_are_tokenized_whole_each_followed_by_end_of_text(corpus, tmp_path, gpt2):
    source, docs = corpus
    out = tmp_path / "ds"
    index = run_prepare(source, out)
    eot = index["eot_id"]
    assert eot == gpt2.eos_id and index["dtype"] == "uint16"
    expected = [gpt2._enc.encode_ordinary(d) + [eot] for d in docs]
    train, val = documents(out, "train"), documents(out, "val")
    assert len(val) == 20 and len(train) == 180  # one document in each block of 10
    # the splits hold whole documents, in the source's order, none lost or repeated
    assert sorted(train + val) == sorted(expected)
    assert [d for d in expected if d in train] == train
    assert all(d[-1] == eot and eot not in d[:-1] for d in train + val)
    for split, docs_in in (("train", train), ("val", val)):
        info = index["splits"][split]
        assert info["documents"] == len(docs_in)
        assert info["tokens"] == sum(map(len, docs_in))
        texts = [gpt2.decode(d[:-1]) for d in docs_in]
        assert info["utf8_bytes"] == sum(len(t.encode("utf-8")) for t in texts)
        for shard in info["shards"]:
            assert sha256_file(out / shard["name"]) == shard["sha256"]
            assert (out / shard["name"]).stat().st_size == shard["bytes"]
    assert index["tokenizer"] == {"type": "tiktoken", "encoding": "gpt2"}
    assert index["tokenizer_fingerprint"] == gpt2.fingerprint
    assert not (out / prep.STATE).exists()
    # the same command again: nothing to do, nothing rewritten
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert run_prepare(source, out)["fingerprint"] == index["fingerprint"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_every_source_kind_gives_the_same_shards(tmp_path, gpt2):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    docs = make_docs(60, seed=1)
    write_jsonl(tmp_path / "a.jsonl", docs)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write((tmp_path / "a.jsonl").read_text(encoding="utf-8"))
    folder = tmp_path / "texts" / "deeper"
    folder.mkdir(parents=True)
    for i, d in enumerate(docs):  # one document per file, found recursively, in name order
        (folder / f"{i:03d}.txt").write_text(d, encoding="utf-8")
    (tmp_path / "texts" / "notes.md").write_text("not matched by the glob")
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    table = pa.table({"id": list(range(60)), "body": docs})
    pq.write_table(table.slice(0, 30), pq_dir / "part0.parquet", row_group_size=7)
    pq.write_table(table.slice(30), pq_dir / "part1.parquet", row_group_size=7)
    datasets.Dataset.from_dict({"body": docs}).save_to_disk(str(tmp_path / "hf"))
    sources = {
        "jsonl": (tmp_path / "a.jsonl", {}),
        "jsonl.gz": (tmp_path / "a.jsonl.gz", {}),
        "text folder": (tmp_path / "texts", {}),
        "parquet": (pq_dir, {"text_field": "body"}),
        "datasets": (tmp_path / "hf", {"text_field": "body"}),
        "datasets (hf:)": (f"hf:{tmp_path / 'hf'}", {"text_field": "body"}),
    }
    results = {}
    for name, (source, kw) in sources.items():
        out = tmp_path / f"out_{name}"
        run_prepare(source, out, chunk_bytes=500, **kw)
        results[name] = (documents(out, "train"), documents(out, "val"))
    first = results["jsonl"]
    assert len(first[0]) == 54 and len(first[1]) == 6
    for name, got in results.items():
        assert got == first, name


def test_a_named_corpus_is_cut_into_paragraphs(tmp_path, gpt2, shared_data_dir):
    index = run_prepare("verdict", tmp_path / "v")
    text = (shared_data_dir / "the-verdict.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    got = documents(tmp_path / "v", "train") + documents(tmp_path / "v", "val")
    assert sorted(gpt2.decode(d[:-1]) for d in got) == sorted(paragraphs)
    assert index["prompt"] == "Every effort moves you"


def test_char_tokenizer_reserves_an_end_of_text_character_the_corpus_lacks(corpus, tmp_path):
    source, docs = corpus
    index = run_prepare(source, tmp_path / "c", tokenizer="char")
    tok = tokenizer_from_dict(index["tokenizer"])
    eot = index["eot_id"]
    chars = set("".join(docs))
    assert tok.chars[eot] not in chars and set(tok.chars) == chars | {tok.chars[eot]}
    assert tok.vocab_size == len(chars) + 1
    got = documents(tmp_path / "c", "train") + documents(tmp_path / "c", "val")
    assert all(d[-1] == eot and eot not in d[:-1] for d in got)
    assert sorted(tok.decode(d[:-1]) for d in got) == sorted(docs)
    # the data module names it as its end of text: no bytes of text in val/bpb
    from llm_scratch.train.module import token_byte_table

    dm = ShardDataModule(path=str(tmp_path / "c"), context_length=8, cache_dir=str(tmp_path))
    assert dm.eos_id == eot
    assert token_byte_table(dm, None)[eot] == 0


def test_val_docs_draws_that_many_whole_documents_by_the_seed(corpus, tmp_path):
    source, _ = corpus
    val = {}
    for seed in (1, 1, 2):
        out = tmp_path / f"s{seed}_{len(val)}"
        run_prepare(source, out, val_docs=7, seed=seed)
        val.setdefault(seed, []).append(documents(out, "val"))
    assert len(val[1][0]) == 7 and val[1][0] == val[1][1]
    assert val[2][0] != val[1][0]


def test_empty_documents_are_skipped_and_counted(tmp_path):
    docs = make_docs(50, empty_every=5)
    index = run_prepare(write_jsonl(tmp_path / "e.jsonl", docs), tmp_path / "out")
    assert index["skipped"]["empty_documents"] == 10
    assert index["splits"]["train"]["documents"] + index["splits"]["val"]["documents"] == 40


def test_a_file_not_utf8_is_skipped_and_counted_or_refused_when_strict(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, d in enumerate(make_docs(30)):
        (folder / f"{i:02d}.txt").write_text(d, encoding="utf-8")
    (folder / "15_latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    index = run_prepare(folder, tmp_path / "out")
    assert index["skipped"]["non_utf8"] == 1
    assert index["skipped"]["non_utf8_examples"] == [str(folder / "15_latin1.txt")]
    with pytest.raises(UserError, match=r"15_latin1\.txt is not UTF-8.*strict=false"):
        run_prepare(folder, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict" / "index.json").exists()


# ============================================================================ workers and resumes
@pytest.mark.slow
def test_shards_are_byte_identical_for_one_and_two_workers(tmp_path):
    source = write_jsonl(tmp_path / "c.jsonl", make_docs(400, seed=3))
    kw = {"chunk_bytes": 2000, "shard_tokens": 3000}
    one = run_prepare(source, tmp_path / "w1", workers=1, **kw)
    two = run_prepare(source, tmp_path / "w2", workers=2, **kw)
    assert len(one["splits"]["train"]["shards"]) >= 3  # several shards, several checkpoints
    assert shard_bytes(tmp_path / "w1") == shard_bytes(tmp_path / "w2")
    assert one["fingerprint"] == two["fingerprint"]


@pytest.mark.slow
def test_sigkill_then_the_same_command_continues_after_the_checked_shards(tmp_path):
    source = write_jsonl(tmp_path / "c.jsonl", make_docs(400, seed=4))
    args = [f"source={source}", "workers=2", "chunk_bytes=2000", "shard_tokens=3000"]
    whole = tmp_path / "whole"
    done = run_cli("training/prepare_data.py", *args, f"out={whole}")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed"
    env = {prep.KILL_AFTER_UNITS_ENV: "20"}
    killed = run_cli("training/prepare_data.py", *args, f"out={out}", env=env)
    assert killed.returncode == -signal.SIGKILL
    state = json.loads((out / prep.STATE).read_text())
    saved = [[e["name"] for e in cp["new"].values()] for cp in state["checkpoints"]]
    assert len(saved) >= 2 and not (out / "index.json").exists()
    assert any(p.name.endswith(".bin.tmp") for p in out.iterdir())  # the shard being written
    with pytest.raises(UserError, match="preparation did not finish"):  # not a dataset yet
        ShardDataModule(path=str(out))
    kept = {n: (out / n).stat().st_mtime_ns for names in saved[:-1] for n in names}
    # a shard of the last checkpoint damaged meanwhile: that checkpoint's shards are made again
    damaged = saved[-1][0]
    with open(out / damaged, "r+b") as f:
        f.seek(HEADER_BYTES)
        f.write(b"\xff\xff")
    resumed = run_cli("training/prepare_data.py", *args, f"out={out}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"shard {damaged} is damaged" in resumed.stderr
    assert f"continuing after {len(kept)} finished shard(s), checked" in resumed.stderr
    assert shard_bytes(out) == shard_bytes(whole)
    assert read_index(out)["fingerprint"] == read_index(whole)["fingerprint"]
    for name, mtime in kept.items():  # checked and kept, not written again
        assert (out / name).stat().st_mtime_ns == mtime
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in whole.iterdir())


@pytest.mark.slow
def test_sigterm_stops_in_one_line_keeping_the_finished_shards(tmp_path):
    source = write_jsonl(tmp_path / "c.jsonl", make_docs(400, seed=5))
    args = ["training/prepare_data.py", f"source={source}", "workers=2", "chunk_bytes=2000"]
    args += ["shard_tokens=3000", f"out={tmp_path / 'ds'}"]
    stopped = run_cli(*args, env={prep.KILL_AFTER_UNITS_ENV: "20:TERM"})
    assert stopped.returncode == 143
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Interrupted by SIGTERM;") and "run the same command" in last
    assert "Traceback" not in stopped.stderr
    names = sorted(p.name for p in (tmp_path / "ds").iterdir())
    assert not any(n.endswith(".bin.tmp") and "_docs" not in n for n in names)  # no half shard
    assert "train_000000.bin" in names and "index.json" not in names
    finished = run_cli(*args)
    assert finished.returncode == 0 and "continuing after" in finished.stderr, finished.stderr
    run_prepare(source, tmp_path / "whole", chunk_bytes=2000, shard_tokens=3000, val_fraction=0.01)
    assert shard_bytes(tmp_path / "ds") == shard_bytes(tmp_path / "whole")


def test_training_on_a_folder_that_is_not_a_dataset_is_one_line(tmp_path):
    result = run_cli("training/run_experiment.py", "data=shards", f"data.path={tmp_path / 'nope'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("error: ") and "not a prepared dataset" in lines[0]
    )
    assert "training/prepare_data.py source=" in lines[0]


def _double(unit: int) -> int:
    return 2 * unit


def test_at_most_twice_the_workers_units_are_in_flight():
    pulled = []

    def units():
        for i in range(40):
            pulled.append(i)
            yield i

    pool = prep._pool(2, {"text_field": "text", "strict": False, "separator": None})
    try:
        for k, value in enumerate(prep._ordered_map(_double, units(), pool, 4)):
            assert value == 2 * k  # in order
            assert len(pulled) - k <= 4  # read ahead of what was handed back: bounded
    finally:
        pool.terminate()
        pool.join()


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise():
    plain = io.StringIO()
    progress = prep.Progress("auto", 10_000_000, stream=plain, interval=0)
    progress.update(2_000_000, 5, 1000)
    progress.update(3_000_000, 7, 2000)
    progress.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("prepare: 5.0/10.0 MB (50%), 12 docs, 3,000 tokens,")
    assert "MB/s" in lines[1] and "ETA" in lines[1]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    bar = prep.Progress("auto", 10_000_000, stream=tty)
    bar.update(5_000_000, 12, 3000)
    bar.close()
    assert bar.mode == "bar"
    assert "12 docs" in tty.getvalue() and "3,000 tokens" in tty.getvalue()


# ============================================================================ refused input
def test_bad_sources_are_refused_in_one_line(tmp_path):
    cases = []
    cases.append((tmp_path / "missing.jsonl", {}, r"source=.*missing\.jsonl: no such file"))
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", {}, r"holds no file matching '\*\*/\*\.txt'"))
    lines = [json.dumps({"text": "fine"})] * 50 + ["{not json"] + [json.dumps({"text": "x"})]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    # in a later unit than the first: the line number counts the lines before the unit
    cases.append((tmp_path / "bad.jsonl", {"chunk_bytes": 100}, r"bad\.jsonl, line 51: not JSON"))
    (tmp_path / "deep.jsonl").write_text(json.dumps({"text": "ok"}) + "\n" + "[" * 200_000 + "\n")
    cases.append((tmp_path / "deep.jsonl", {}, r"deep\.jsonl, line 2: nested too deeply"))
    (tmp_path / "huge.jsonl").write_text('{"text": "a", "n": ' + "9" * 5000 + "}\n")
    cases.append((tmp_path / "huge.jsonl", {}, r"huge\.jsonl, line 1: not readable as JSON"))
    write_jsonl(tmp_path / "field.jsonl", ["a", "b"], field="content")
    cases.append((tmp_path / "field.jsonl", {}, r"line 1: no field 'text' \(it has: id, content\)"))
    for source, kw, message in cases:
        out = tmp_path / f"out{len(message)}"
        with pytest.raises(UserError, match=message):
            run_prepare(source, out, **kw)
        assert not (out / "index.json").exists()


def test_the_command_line_refuses_in_one_error_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n[1, 2\n')
    result = run_cli(
        "training/prepare_data.py", f"source={tmp_path / 'bad.jsonl'}", f"out={tmp_path / 'o'}"
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert lines[-1].startswith("error: ") and "bad.jsonl, line 2: not JSON" in lines[-1]
    assert "Traceback" not in result.stderr
    unset = run_cli("training/prepare_data.py", f"source={tmp_path / 'bad.jsonl'}")
    assert unset.returncode == 2 and unset.stderr.startswith("error: out is not set:")


def test_an_offline_hub_name_fails_fast_in_one_line(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("llm_scratch.hub.reachable", lambda: False)
    with pytest.raises(UserError, match=r"source=hf:nobody/nothing: cannot reach the Hugging"):
        run_prepare("hf:nobody/nothing", tmp_path / "o")


def test_an_output_folder_of_something_else_or_other_settings_is_refused(corpus, tmp_path):
    source, _ = corpus
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty and holds no dataset"):
        run_prepare(source, other)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    out = tmp_path / "ds"
    run_prepare(source, out)
    before = shard_bytes(out)
    with pytest.raises(UserError, match=r"other settings: tokenizer='gpt2' \(asked: 'char'\)"):
        run_prepare(source, out, tokenizer="char")
    with pytest.raises(UserError, match=r"seed=1337 \(asked: 7\)"):
        run_prepare(source, out, seed=7)
    assert shard_bytes(out) == before


def test_a_full_disk_is_one_line_and_leaves_no_dataset(corpus, tmp_path, monkeypatch):
    source, _ = corpus

    class FullDisk:  # the shard file: every write fails as on a full disk
        def __init__(self, f) -> None:
            self.f = f

        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str):
            return getattr(self.f, name)

    opened = prep.ShardWriter.__init__

    def on_a_full_disk(self, *args) -> None:
        opened(self, *args)
        self._f = FullDisk(self._f)

    monkeypatch.setattr(prep.ShardWriter, "__init__", on_a_full_disk)
    out = tmp_path / "ds"
    with pytest.raises(
        UserError, match=r"No space left on the device while writing .*run the same"
    ):
        run_prepare(source, out)
    assert not out.exists()  # nothing was finished: the folder made for it is gone again


def test_a_damaged_shard_is_refused_when_training_starts(corpus, tmp_path):
    source, _ = corpus
    out = tmp_path / "ds"
    run_prepare(source, out)
    shard = out / "train_000000.bin"
    data = bytearray(shard.read_bytes())
    data[HEADER_BYTES] ^= 1
    shard.write_bytes(bytes(data))
    dm = ShardDataModule(path=str(out), context_length=8, batch_size=2, cache_dir=str(tmp_path))
    with pytest.raises(
        UserError, match=r"train_000000\.bin does not match its sha256.*prepare_data\.py source="
    ):
        dm.prepare_data()
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(UserError, match=r"train_000000\.bin has \d+ bytes, the index says"):
        ShardDataModule(path=str(out), context_length=8, verify="size").prepare_data()
    with pytest.raises(UserError, match="no index.json"):
        ShardDataModule(path=str(tmp_path))


# ============================================================================ training from shards
@pytest.fixture
def dataset(corpus, tmp_path) -> Path:
    source, _ = corpus
    run_prepare(source, tmp_path / "ds", shard_tokens=500, chunk_bytes=400)
    return tmp_path / "ds"


def windows(dm: ShardDataModule, loader=None) -> list[tuple[int, ...]]:
    loader = loader if loader is not None else dm.train_dataloader()
    return [tuple(row.tolist()) for x, _ in loader for row in x]


def test_an_epoch_reads_every_window_once_across_shards(dataset, tmp_path):
    dm = ShardDataModule(
        path=str(dataset), context_length=16, batch_size=4, drop_last=False, cache_dir=str(tmp_path)
    )
    dm.prepare_data()
    dm.setup("fit")
    assert len(read_index(dataset)["splits"]["train"]["shards"]) >= 3
    tokens = split_tokens(dataset, "train")
    n = (len(tokens) - 17) // 16 + 1
    expected = sorted(tuple(tokens[i * 16 : i * 16 + 16].tolist()) for i in range(n))
    first = windows(dm)
    assert sorted(first) == expected and first != sorted(first)  # all once, shuffled
    x, y = dm.train_dataset[3]
    assert torch.equal(x[1:], y[:-1]) and y[-1] == tokens[3 * 16 + 16]
    dm.train_sampler.set_epoch(1)
    assert windows(dm) != first  # another order next epoch
    val = split_tokens(dataset, "val")
    assert torch.equal(dm.val_dataset[1][0], torch.from_numpy(val[16:32].astype(np.int64)))


def test_align_document_starts_windows_at_document_starts(dataset, tmp_path):
    docs = np.fromfile(dataset / "train_docs.bin", dtype="<i8")
    starts = _document_starts(np.array([0, 5, 40]), 60, 16)
    # doc [0,5): one window; [5,40): 34 targets -> 3 windows; [40,60): 19 targets -> 2, the
    # last of which would run past the end of the split
    assert starts.tolist() == [0, 5, 21, 37, 40]
    dm = ShardDataModule(
        path=str(dataset),
        context_length=16,
        batch_size=4,
        align="document",
        cache_dir=str(tmp_path),
    )
    dm.setup("fit")
    tokens = split_tokens(dataset, "train")
    got = [dm.train_dataset.start(i) for i in range(len(dm.train_dataset))]
    assert set(docs[:-1].tolist()) <= set(got)  # every document has a window from its start
    eot = read_index(dataset)["eot_id"]
    for s in got:  # each starts a document, or tiles one from its start
        doc = int(docs[np.searchsorted(docs, s, side="right") - 1])
        assert (s - doc) % 16 == 0 and eot not in tokens[doc:s].tolist()[:-1] or s == doc


def test_random_sampling_and_loader_workers_give_the_same_windows(dataset, tmp_path):
    common = {
        "path": str(dataset),
        "context_length": 16,
        "batch_size": 4,
        "cache_dir": str(tmp_path),
    }
    dm = ShardDataModule(**common, sampling="random", samples_per_epoch=40)
    dm.setup("fit")
    again = ShardDataModule(**common, sampling="random", samples_per_epoch=40, num_workers=2)
    again.setup("fit")
    assert len(dm.train_dataset) == 40
    offsets = [dm.train_dataset.start((0, i)) for i in range(40)]
    assert any(o % 16 for o in offsets)  # nanoGPT's: any offset, not only every 16 tokens
    x, y = dm.train_dataset[(0, 5)]
    tokens = split_tokens(dataset, "train")
    assert x.tolist() == tokens[offsets[5] : offsets[5] + 16].tolist()
    assert windows(dm) == windows(again)  # two loader workers: the same windows, same order
    dm.train_sampler.set_epoch(1)
    assert windows(dm) != windows(again)  # fresh offsets each epoch


def test_a_resumed_epoch_continues_at_its_first_untrained_window(dataset, tmp_path):
    common = {
        "path": str(dataset),
        "context_length": 16,
        "batch_size": 4,
        "cache_dir": str(tmp_path),
    }
    dm = ShardDataModule(**common)
    dm.setup("fit")
    whole = windows(dm)
    state = {"epoch": 0, "windows_done": 12, "num_windows": dm.train_sampler.n, "seed": dm.seed}
    resumed = ShardDataModule(**common)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    assert windows(resumed) == whole[12:]


SHARD_RUN = [
    *FAST,
    "data=shards",
    "data.context_length=16",
    "data.batch_size=4",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "callbacks.text_sampler=null",
    "scheduler.total_steps=8",
]


@pytest.mark.slow
def test_training_from_shards_resumes_exactly_and_names_the_dataset(corpus, tmp_path):
    source, _ = corpus
    ds = tmp_path / "ds"
    index = run_prepare(source, ds, tokenizer="char")
    common = [*SHARD_RUN, f"data.path={ds}"]

    def run(name: str, steps: int, ckpt: Path | None = None) -> dict[int, float]:
        extra = [f"ckpt_path={ckpt}"] if ckpt else []
        train(compose_config([*common, f"trainer.max_steps={steps}", *extra], tmp_path / name))
        return by_step(tmp_path / name, "train/loss")

    whole = run("whole", 8)
    half = run("half", 4)
    rest = run("rest", 8, tmp_path / "half")
    assert sorted(whole) == list(range(1, 9))
    assert {**half, **rest} == whole  # the same windows in the same order: the same losses
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["dataset"] == {"path": str(ds.resolve()), "fingerprint": index["fingerprint"]}
    assert json.loads((tmp_path / "whole" / "tokenizer.json").read_text()) == index["tokenizer"]


class RecordWindows(L.Callback):
    """Each rank writes the windows (as token lists) it trained on into the run directory."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen += batch[0].tolist()

    def on_train_end(self, trainer, pl_module) -> None:
        path = Path(trainer.default_root_dir) / f"windows_{trainer.global_rank}.json"
        path.write_text(json.dumps(self.seen))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_read_disjoint_windows_that_make_one_epoch(corpus, tmp_path, strategy):
    source, _ = corpus
    ds = tmp_path / "ds"
    run_prepare(source, ds, tokenizer="char")
    run = tmp_path / "run"
    result = run_cli(
        "training/run_experiment.py",
        *SHARD_RUN,
        f"data.path={ds}",
        f"trainer={strategy}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=0",
        "data.drop_last=false",
        "+callbacks.record._target_=tests.test_shards.RecordWindows",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((run / f"windows_{r}.json").read_text()) for r in (0, 1)]
    dm = ShardDataModule(path=str(ds), context_length=16, batch_size=4)
    dm.setup("fit")
    epoch = [dm.train_dataset[i][0].tolist() for i in range(len(dm.train_dataset))]
    seen = [tuple(w) for r in ranks for w in r]
    assert len(ranks[0]) == len(ranks[1]) == len(epoch) // 2
    assert len(set(seen)) == len(seen)  # no window twice
    # together: one process's epoch (less its last window when the count is odd)
    assert set(seen) == {tuple(w) for w in epoch[: len(epoch) - len(epoch) % 2]}


def test_preparing_imports_neither_torch_nor_lightning():
    # smaller and faster to start: the main process and each worker
    code = "import sys, llm_scratch.data.prepare; print({'torch', 'lightning'} & set(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert out.returncode == 0 and out.stdout.strip() == "set()", out.stderr


@pytest.mark.slow
def test_the_prepare_benchmark_runs_both_on_the_same_file_and_they_agree(tmp_path):
    pytest.importorskip("datasets")
    source = write_jsonl(tmp_path / "c.jsonl", make_docs(300, seed=6))
    out = tmp_path / "prepare.json"
    result = run_cli(
        "-m", "llm_scratch.bench", "prepare", f"--jsonl={source}", "--no-training", f"--out={out}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "llm_scratch prepare_data" in result.stdout and "nanoGPT prepare.py" in result.stdout
    compare = json.loads(out.read_text())["compare"]
    ours, ref = compare["ours"][0], compare["nanogpt"][0]
    assert ours["tokens"] == ref["tokens"]  # the same documents, each with its end-of-text
    assert ours["bytes"] == ref["bytes"] == source.stat().st_size
    assert compare["speedup_MB_per_s"] > 0 and ours["peak_rss_mb"] > 0
    missing = run_cli("-m", "llm_scratch.bench", "prepare", f"--jsonl={tmp_path / 'no.jsonl'}")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: --jsonl")
