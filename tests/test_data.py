"""Tests for llm_scratch.data on the real corpora in the shared data folder (offline). Also: a
damaged or wrong token cache is rebuilt, never used and never a traceback (empty, a bit-rotted
header, cut short, or a valid cache of other tokens copied over it)."""

from __future__ import annotations

import dataclasses
import pickle
import shutil
import tracemalloc
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_scratch.data import (
    CORPORA,
    BPETokenizer,
    CharTokenizer,
    EpochShuffleSampler,
    LMDataModule,
    RandomWindowDataset,
    SlidingWindowDataset,
    build_tokenizer,
    corpora,
    data_dir,
    load_corpus,
    load_tokenizer,
    tokenize_cached,
)
from llm_scratch.data.token_cache import token_cache_path, token_dtype
from llm_scratch.errors import UserError

VERDICT_TOKENS = 5145
SHAKESPEARE_CHARS = 65


@pytest.fixture(scope="module")
def verdict_text(shared_data_dir: Path) -> str:
    return load_corpus("verdict")


@pytest.fixture(scope="module")
def shakespeare_text(shared_data_dir: Path) -> str:
    return load_corpus("shakespeare")


@pytest.fixture(scope="module")
def gpt2(shared_data_dir: Path) -> BPETokenizer:
    return BPETokenizer("gpt2")


@pytest.fixture(scope="module")
def shakespeare_char_tokens(shakespeare_text: str) -> np.ndarray:
    return tokenize_cached(shakespeare_text, CharTokenizer.from_text(shakespeare_text))


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def _check_window(ds, tokens, i: int, start: int, ctx: int) -> None:
    x, y = ds[i]
    raw = np.asarray(tokens, dtype=np.int64)
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert x.shape == (ctx,) and y.shape == (ctx,)
    np.testing.assert_array_equal(x.numpy(), raw[start : start + ctx])
    np.testing.assert_array_equal(y.numpy(), raw[start + 1 : start + ctx + 1])


# --------------------------------------------------------------------------- corpora, facts


def test_corpus_facts(verdict_text: str, shakespeare_text: str, gpt2: BPETokenizer) -> None:
    assert len(verdict_text.encode("utf-8")) == CORPORA["verdict"].size == 20_479
    assert len(shakespeare_text.encode("utf-8")) == CORPORA["shakespeare"].size == 1_115_394
    assert len(gpt2.encode(verdict_text)) == VERDICT_TOKENS
    assert CharTokenizer.from_text(shakespeare_text).vocab_size == SHAKESPEARE_CHARS


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data_dir(tmp_path) == tmp_path
    monkeypatch.setenv("LLM_SCRATCH_DATA_DIR", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    monkeypatch.delenv("LLM_SCRATCH_DATA_DIR")
    assert data_dir() is None
    monkeypatch.setenv("LLM_SCRATCH_CACHE_DIR", str(tmp_path / "c"))
    assert corpora.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LLM_SCRATCH_CACHE_DIR")
    assert corpora.cache_dir() == Path.home() / ".cache" / "llm_scratch"


def test_load_corpus_folder_sorted_txt_only(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert load_corpus(str(tmp_path)) == "first\nsecond"
    assert load_corpus(str(tmp_path / "b.txt")) == "second"


def test_load_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="neither a named corpus .*verdict, shakespeare"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="neither a named corpus"):
        load_corpus("no_such_corpus")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        load_corpus(str(tmp_path / "empty.txt"))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.md").write_text("not txt", encoding="utf-8")
    with pytest.raises(UserError, match=r"no \.txt files"):
        load_corpus(str(folder))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus(str(tmp_path / "latin1.txt"))


# --------------------------------------------------------------------------- download


def _no_network(url, out):
    raise urllib.error.URLError("simulated: no network")


def test_missing_named_corpus_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ddir, cdir = tmp_path / "data", tmp_path / "cache"
    ddir.mkdir()
    cdir.mkdir()
    monkeypatch.setattr(corpora, "_download", _no_network)
    with pytest.raises(UserError) as e:
        load_corpus("verdict", data_dir=str(ddir), cache_dir=str(cdir))
    msg = str(e.value)
    assert "Could not download the-verdict.txt" in msg and "simulated: no network" in msg
    assert CORPORA["verdict"].url in msg
    assert str(cdir / "the-verdict.txt") in msg and "LLM_SCRATCH_DATA_DIR" in msg
    assert _files_under(cdir) == [] and _files_under(ddir) == []


def test_unreachable_file_url_uses_real_downloader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = dataclasses.replace(CORPORA["verdict"], url=(tmp_path / "nowhere.txt").as_uri())
    monkeypatch.setitem(CORPORA, "verdict", info)
    cdir = tmp_path / "cache"
    with pytest.raises(UserError, match="Could not download the-verdict.txt"):
        load_corpus("verdict", data_dir=str(tmp_path / "empty"), cache_dir=str(cdir))
    assert _files_under(cdir) == []


def test_download_sha256_mismatch_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "tampered.txt"
    bad.write_text("not the verdict", encoding="utf-8")
    monkeypatch.setitem(
        CORPORA, "verdict", dataclasses.replace(CORPORA["verdict"], url=bad.as_uri())
    )
    cdir = tmp_path / "cache"
    with pytest.raises(UserError, match="sha256") as e:
        load_corpus("verdict", data_dir=str(tmp_path / "empty"), cache_dir=str(cdir))
    assert CORPORA["verdict"].sha256 in str(e.value)
    assert _files_under(cdir) == []


def test_download_verified_then_found_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data_dir: Path
) -> None:
    src = shared_data_dir / "the-verdict.txt"
    monkeypatch.setitem(
        CORPORA, "verdict", dataclasses.replace(CORPORA["verdict"], url=src.as_uri())
    )
    cdir = tmp_path / "cache"
    text = load_corpus("verdict", data_dir=str(tmp_path / "empty"), cache_dir=str(cdir))
    assert text == src.read_text(encoding="utf-8")
    assert _files_under(cdir) == [cdir / "the-verdict.txt"]
    # Present now: no network access at all.
    monkeypatch.setattr(corpora, "_download", _no_network)
    assert load_corpus("verdict", data_dir=str(tmp_path / "empty"), cache_dir=str(cdir)) == text


def test_corrupted_named_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "the-verdict.txt").write_text("corrupted", encoding="utf-8")
    with pytest.raises(UserError, match="not the expected the-verdict.txt"):
        load_corpus("verdict", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_no_download_when_not_allowed(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="prepare_data"):
        load_corpus("verdict", data_dir=str(tmp_path), cache_dir=str(tmp_path), download=False)


# --------------------------------------------------------------------------- tokenizers


def test_char_round_trip(shakespeare_text: str) -> None:
    tok = CharTokenizer.from_text(shakespeare_text)
    assert tok.name == "char" and tok.eos_id is None
    assert tok.chars == sorted(set(shakespeare_text))
    ids = tok.encode(shakespeare_text)
    assert len(ids) == len(shakespeare_text) and max(ids) == SHAKESPEARE_CHARS - 1
    assert tok.decode(ids) == shakespeare_text
    assert tok.decode(torch.tensor(ids[:100])) == shakespeare_text[:100]


def test_char_rejects_unknown_chars() -> None:
    tok = CharTokenizer.from_text("hello world")
    with pytest.raises(UserError) as e:
        tok.encode("hello é wörld é")
    msg = str(e.value)
    assert "'é'" in msg and "'ö'" in msg and msg.count("'é'") == 1
    assert "training corpus" in msg
    with pytest.raises(UserError, match="and 5 more"):
        tok.encode("ABCDEFGHIJKLMNO")
    with pytest.raises(UserError, match="outside the char vocabulary"):
        tok.decode([0, 99])


def test_bpe_round_trip_and_eos(verdict_text: str, gpt2: BPETokenizer) -> None:
    assert gpt2.name == "gpt2" and gpt2.vocab_size == 50257 and gpt2.eos_id == 50256
    assert gpt2.encode("<|endoftext|>") == [50256]
    ids = gpt2.encode(verdict_text + "<|endoftext|>")
    assert ids[-1] == 50256 and len(ids) == VERDICT_TOKENS + 1
    assert gpt2.decode(ids) == verdict_text + "<|endoftext|>"
    assert gpt2.decode(np.array(ids[:20])) == gpt2.decode(ids[:20])
    assert pickle.loads(pickle.dumps(gpt2)) == gpt2


def test_build_tokenizer(gpt2: BPETokenizer) -> None:
    assert build_tokenizer("char", "abca").chars == ["a", "b", "c"]
    assert build_tokenizer("gpt2") == gpt2
    with pytest.raises(UserError, match="gpt2"):
        build_tokenizer("gpt-7")
    with pytest.raises(UserError, match="corpus text"):
        build_tokenizer("char", None)


def test_bpe_without_cached_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken.load
    import tiktoken.registry

    def offline(blobpath: str) -> bytes:
        raise OSError(f"simulated: cannot reach {blobpath}")

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(UserError, match="TIKTOKEN_CACHE_DIR"):
        BPETokenizer("gpt2")


def test_tokenizer_save_load(tmp_path: Path, shakespeare_text: str, gpt2: BPETokenizer) -> None:
    char = CharTokenizer.from_text(shakespeare_text)
    char.save(tmp_path / "char.json")
    loaded = load_tokenizer(tmp_path / "char.json")
    assert loaded == char and loaded.fingerprint == char.fingerprint
    assert loaded.decode(char.encode("ROMEO: hi\n")) == "ROMEO: hi\n"
    gpt2.save(tmp_path / "bpe.json")
    assert load_tokenizer(tmp_path / "bpe.json") == gpt2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe.json", "char.json"]  # no temp
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"type": "sentencepiece"}', encoding="utf-8")
    with pytest.raises(UserError, match="Unrecognised tokenizer"):
        load_tokenizer(tmp_path / "bad.json")


# --------------------------------------------------------------------------- token cache


def test_token_cache(tmp_path: Path, verdict_text: str, gpt2: BPETokenizer, monkeypatch) -> None:
    assert token_dtype(50257) == np.uint16 and token_dtype(100277) == np.uint32
    arr = tokenize_cached(verdict_text, gpt2, cache_dir=tmp_path)
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    assert arr.dtype == np.uint16 and arr.shape == (VERDICT_TOKENS,)
    assert arr.tolist() == gpt2.encode(verdict_text)
    path = token_cache_path(verdict_text, gpt2, cache_dir=tmp_path)
    assert path.parent == tmp_path / "tokens" and _files_under(tmp_path) == [path]

    def no_encode(text):
        raise AssertionError("re-tokenized despite the cache")

    monkeypatch.setattr(gpt2, "encode", no_encode)
    np.testing.assert_array_equal(tokenize_cached(verdict_text, gpt2, cache_dir=tmp_path), arr)
    # Another text or another vocabulary gets another key.
    char = CharTokenizer.from_text(verdict_text)
    assert token_cache_path(verdict_text, char, tmp_path) != path
    assert token_cache_path(verdict_text + " ", gpt2, tmp_path) != path


def test_corrupt_token_cache_is_rebuilt(tmp_path: Path, verdict_text: str) -> None:
    tok = CharTokenizer.from_text(verdict_text)
    path = token_cache_path(verdict_text, tok, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    arr = tokenize_cached(verdict_text, tok, cache_dir=tmp_path)
    assert tok.decode(arr) == verdict_text


# --------------------------------------------------------------------------- datasets


@pytest.mark.parametrize(
    ("n", "ctx", "stride"), [(100, 8, 1), (100, 8, 8), (100, 8, 3), (9, 8, 1), (37, 4, 50)]
)
def test_sliding_windows_synthetic(n: int, ctx: int, stride: int) -> None:
    tokens = np.arange(1000, 1000 + n, dtype=np.uint16)
    ds = SlidingWindowDataset(tokens, ctx, stride)
    assert len(ds) == (n - ctx - 1) // stride + 1
    for i in range(len(ds)):
        _check_window(ds, tokens, i, i * stride, ctx)
    last = (len(ds) - 1) * stride
    assert last + ctx + 1 <= n  # last window in bounds
    assert len(ds) * stride + ctx + 1 > n  # and no room for another
    _check_window(ds, tokens, -1, last, ctx)
    with pytest.raises(IndexError):
        ds[len(ds)]


@pytest.mark.parametrize("stride", [1, 256])
def test_sliding_windows_verdict(verdict_text: str, gpt2: BPETokenizer, stride: int) -> None:
    tokens = tokenize_cached(verdict_text, gpt2)
    ds = SlidingWindowDataset(tokens, 256, stride)
    assert len(ds) == {1: VERDICT_TOKENS - 256, 256: 20}[stride]
    for i in [0, 1, len(ds) // 2, len(ds) - 1]:
        _check_window(ds, tokens, i, i * stride, 256)
    # A torch tensor works the same.
    ds_t = SlidingWindowDataset(torch.from_numpy(tokens.astype(np.int64)), 256, stride)
    for a, b in zip(ds_t[len(ds) - 1], ds[len(ds) - 1], strict=True):
        assert torch.equal(a, b)


def test_sliding_window_errors() -> None:
    with pytest.raises(UserError, match=r"N=10 tokens.*context_length=10"):
        SlidingWindowDataset(np.arange(10), 10, 1)
    with pytest.raises(UserError, match="stride"):
        SlidingWindowDataset(np.arange(10), 4, 0)
    with pytest.raises(UserError, match="context_length"):
        SlidingWindowDataset(np.arange(10), 0, 1)


def _reachable_buffers_nbytes(ds) -> int:
    total = 0
    for value in vars(ds).values():
        assert not isinstance(value, list | tuple | dict), "per-window storage"
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, torch.Tensor):
            total += value.untyped_storage().nbytes()
    return total


def test_stride_one_dataset_memory_is_linear(shakespeare_char_tokens: np.ndarray) -> None:
    tokens = np.array(shakespeare_char_tokens)  # in RAM, so tracemalloc sees any copy
    n, ctx = len(tokens), 256
    tracemalloc.start()
    try:
        ds = SlidingWindowDataset(tokens, ctx, stride=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ds) == n - ctx == 1_115_394 - 256
    assert peak < 64 * 1024  # no O(N * context_length) (~570 MB as int16 windows) storage
    assert ds.tokens is tokens
    assert _reachable_buffers_nbytes(ds) == n * tokens.itemsize
    rng = np.random.default_rng(0)
    for i in [0, len(ds) - 1, *rng.integers(len(ds), size=5).tolist()]:
        _check_window(ds, tokens, i, i, ctx)


def test_random_window_dataset_deterministic(shakespeare_char_tokens: np.ndarray) -> None:
    tokens, ctx = shakespeare_char_tokens, 64
    a = RandomWindowDataset(tokens, ctx, num_samples=50, seed=7)
    b = RandomWindowDataset(tokens, ctx, num_samples=50, seed=7)
    c = RandomWindowDataset(tokens, ctx, num_samples=50, seed=8)
    assert len(a) == 50
    offsets = [a.offset(i) for i in range(50)]
    assert offsets == [b.offset(i) for i in reversed(range(50))][::-1]  # order-independent
    assert offsets != [c.offset(i) for i in range(50)]
    assert len(set(offsets)) > 45
    assert all(0 <= o <= len(tokens) - ctx - 1 for o in offsets)
    for i in [0, 17, 49]:
        _check_window(a, tokens, i, offsets[i], ctx)
    # End of range reachable: a tiny array has only two offsets.
    tiny = RandomWindowDataset(np.arange(6), 4, num_samples=200, seed=0)
    assert {tiny.offset(i) for i in range(200)} == {0, 1}


def test_random_windows_are_drawn_afresh_each_epoch(shakespeare_char_tokens: np.ndarray) -> None:
    # The offsets depended on (seed, index) only: every epoch reused one fixed set of windows.
    tokens, ctx, n = shakespeare_char_tokens, 64, 200
    a = RandomWindowDataset(tokens, ctx, num_samples=n, seed=7)
    b = RandomWindowDataset(tokens, ctx, num_samples=n, seed=7)
    epoch0 = {a.offset(i, 0) for i in range(n)}
    epoch1 = {a.offset(i, 1) for i in range(n)}
    assert len(epoch0 & epoch1) < 5  # fresh offsets, not a reshuffle
    assert [a.offset(i, 1) for i in range(n)] == [b.offset(i, 1) for i in range(n)]
    assert torch.equal(a[(1, 17)][0], b[(1, 17)][0])
    assert torch.equal(a[17][0], a[(0, 17)][0])  # a plain index is epoch 0
    _check_window(a, tokens, (3, 5), a.offset(5, 3), ctx)
    # The sampler hands its epoch to the dataset, so it reaches DataLoader workers too.
    sampler = EpochShuffleSampler(n, seed=3, with_epoch=True)
    sampler.set_epoch(2)
    items = list(sampler)
    assert {e for e, _ in items} == {2} and sorted(i for _, i in items) == list(range(n))


def test_epoch_shuffle_sampler() -> None:
    s = EpochShuffleSampler(100, seed=3)
    e0 = list(s)
    assert sorted(e0) == list(range(100)) and len(s) == 100
    assert list(s) == e0 == list(EpochShuffleSampler(100, seed=3))
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and sorted(e1) == list(range(100))
    t = EpochShuffleSampler(100, seed=3)
    t.set_epoch(1)
    assert list(t) == e1
    assert list(EpochShuffleSampler(100, seed=4)) != e0
    assert list(EpochShuffleSampler(10, seed=3, shuffle=False)) == list(range(10))


def test_sampler_under_distributed_wrapper() -> None:
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    def shards(epoch: int) -> list[list[int]]:
        out = []
        for rank in range(2):
            inner = EpochShuffleSampler(10, seed=3)
            w = DistributedSamplerWrapper(inner, num_replicas=2, rank=rank, shuffle=True, seed=0)
            w.set_epoch(epoch)
            assert inner.epoch == epoch  # forwarded by Lightning's wrapper
            out.append(list(w))
        return out

    r0, r1 = shards(0)
    assert len(r0) == len(r1) == 5 and sorted(r0 + r1) == list(range(10))
    assert shards(0) == [r0, r1] and shards(1) != [r0, r1]


def test_mid_epoch_resume_under_ddp_restarts_the_epoch(caplog: pytest.LogCaptureFixture) -> None:
    # DistributedSamplerWrapper keeps the whole epoch's length: a sampler shortened by resume_at
    # made it index past the end (IndexError) on a DDP resume.
    from types import SimpleNamespace

    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    def resumed(world_size: int) -> LMDataModule:
        dm = LMDataModule(corpus="verdict", tokenizer="char", context_length=32, batch_size=4)
        dm.trainer = SimpleNamespace(world_size=world_size, is_global_zero=True)
        dm.setup("fit")
        n = dm.train_sampler.n
        dm.load_state_dict({"epoch": 1, "windows_done": 8, "num_windows": n, "seed": dm.seed})
        return dm

    with caplog.at_level("WARNING", logger="llm_scratch.data.datamodule"):
        dm = resumed(world_size=2)
    assert "restarts from its first batch" in caplog.text
    sampler = dm.train_sampler
    shards = []
    for rank in range(2):
        w = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=False)
        w.set_epoch(1)
        shards.append(list(w))
    # the whole epoch (no IndexError), split between the ranks
    assert len(shards[0]) == len(shards[1]) == (sampler.n + 1) // 2
    assert set(shards[0] + shards[1]) == set(range(sampler.n))
    # one process: the epoch continues at the first window not trained on
    single = resumed(world_size=1).train_sampler
    epoch1 = EpochShuffleSampler(single.n, seed=single.seed)
    epoch1.set_epoch(1)
    assert list(single) == list(epoch1)[8:]


# --------------------------------------------------------------------------- LMDataModule


def test_datamodule_verdict_gpt2() -> None:
    dm = LMDataModule(corpus="verdict", tokenizer="gpt2", context_length=256, batch_size=2)
    assert dm.vocab_size == 50257 and dm.eos_id == 50256  # before prepare/setup
    assert dm.default_prompt == "Every effort moves you"
    dm.prepare_data()
    dm.setup("fit")
    assert dm.tokens_train == int(VERDICT_TOKENS * 0.9) == 4630
    assert dm.tokens_val == VERDICT_TOKENS - 4630
    assert len(dm.train_dataset) == (4630 - 257) // 256 + 1 == 18
    assert len(dm.val_dataset) == (515 - 257) // 256 + 1 == 2
    train = dm.train_dataloader()
    assert len(train) == 9
    x, y = next(iter(train))
    assert x.shape == y.shape == (2, 256) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    val1 = [torch.cat(b) for b in dm.val_dataloader()]
    val2 = [torch.cat(b) for b in dm.val_dataloader()]
    assert len(val1) == 1 and all(torch.equal(a, b) for a, b in zip(val1, val2, strict=True))
    # The first validation window starts right after the training split.
    first_val_x = val1[0][0]
    full = np.asarray(tokenize_cached(load_corpus("verdict"), dm.tokenizer), dtype=np.int64)
    np.testing.assert_array_equal(first_val_x.numpy(), full[4630 : 4630 + 256])


def test_datamodule_shakespeare_char_and_cache_reuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = dict(corpus="shakespeare", tokenizer="char", context_length=32, batch_size=4)
    dm = LMDataModule(cache_dir=str(tmp_path), **kwargs)
    assert dm.vocab_size == SHAKESPEARE_CHARS
    assert dm.default_prompt == "ROMEO:"
    dm.prepare_data()
    dm.prepare_data()  # idempotent
    dm.setup()
    dm.setup()  # no-op
    (cached,) = _files_under(tmp_path / "tokens")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < SHAKESPEARE_CHARS

    calls = []
    original = CharTokenizer.encode

    def counting_encode(self, text):
        calls.append(len(text))
        if len(text) > 1000:
            raise AssertionError("corpus re-tokenized despite the cache")
        return original(self, text)

    monkeypatch.setattr(CharTokenizer, "encode", counting_encode)
    dm2 = LMDataModule(cache_dir=str(tmp_path), **kwargs)
    dm2.prepare_data()
    dm2.setup()
    assert calls == [] and _files_under(tmp_path / "tokens") == [cached]
    assert torch.equal(dm2.train_dataset[5][0], dm.train_dataset[5][0])


def test_datamodule_random_sampling_and_epochs() -> None:
    kwargs = dict(
        corpus="shakespeare",
        tokenizer="char",
        context_length=16,
        batch_size=4,
        sampling="random",
        samples_per_epoch=40,
        seed=5,
    )
    dm = LMDataModule(**kwargs)
    dm.setup()
    assert isinstance(dm.train_dataset, RandomWindowDataset) and len(dm.train_dataset) == 40
    loader = dm.train_dataloader()
    epoch0 = torch.cat([x for x, _ in loader])
    assert torch.equal(epoch0, torch.cat([x for x, _ in loader]))  # same epoch, same order
    dm.train_sampler.set_epoch(1)
    epoch1 = torch.cat([x for x, _ in loader])
    # Fresh windows each epoch (they were the same 40 windows reshuffled), as nanoGPT draws them.
    assert not set(map(tuple, epoch0.tolist())) & set(map(tuple, epoch1.tolist()))
    # Reproducible: the same (seed, epoch) gives the same windows, also through worker processes.
    again = LMDataModule(**{**kwargs, "num_workers": 2})
    again.setup()
    again.train_sampler.set_epoch(1)
    assert torch.equal(torch.cat([x for x, _ in again.train_dataloader()]), epoch1)
    # A resume mid-epoch continues that epoch's windows.
    resumed = LMDataModule(**kwargs)
    resumed.setup()
    state = {"epoch": 1, "windows_done": 8, "num_windows": 40, "seed": 5}
    resumed.load_state_dict(state)
    assert torch.equal(torch.cat([x for x, _ in resumed.train_dataloader()]), epoch1[8:])


def test_datamodule_text_corpus(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abcdefgh" * 20, encoding="utf-8")
    (tmp_path / "b.txt").write_text("hgfedcba" * 20, encoding="utf-8")
    dm = LMDataModule(
        corpus="text",
        path=str(tmp_path),
        tokenizer="char",
        context_length=8,
        batch_size=2,
        cache_dir=str(tmp_path / "cache"),
    )
    assert dm.vocab_size == 9  # a..h and "\n"
    assert dm.default_prompt == "a"  # "The " is not in this vocabulary
    dm.setup()
    assert dm.tokens_train + dm.tokens_val == 321
    dm2 = LMDataModule(
        corpus=str(tmp_path / "a.txt"),
        tokenizer="gpt2",
        context_length=8,
        batch_size=2,
        val_fraction=0.25,
    )
    assert dm2.default_prompt == "The "
    dm2.setup()
    assert len(dm2.train_dataset) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sampling": "bogus"}, "sampling"),
        ({"batch_size": 0}, "batch_size"),
        ({"context_length": -1}, "context_length"),
        ({"stride": 0}, "stride"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": 0}, "val_fraction"),
        ({"num_workers": -1}, "num_workers"),
        ({"corpus": "text"}, "data.path"),
    ],
)
def test_datamodule_rejects_bad_args(kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        LMDataModule(**kwargs)


def test_datamodule_split_too_short() -> None:
    dm = LMDataModule(corpus="verdict", tokenizer="gpt2", context_length=600)
    with pytest.raises(
        UserError, match=r"validation split has 515 tokens.*context_length\+1 = 601"
    ):
        dm.setup()
    dm = LMDataModule(corpus="verdict", tokenizer="gpt2", context_length=256, batch_size=32)
    with pytest.raises(UserError, match="18 windows, fewer than batch_size=32"):
        dm.setup()


def test_datamodule_with_trainer(tmp_path: Path) -> None:
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self, vocab_size: int) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(vocab_size, 8)
            self.head = torch.nn.Linear(8, vocab_size)

        def _loss(self, batch):
            x, y = batch
            logits = self.head(self.emb(x))
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())

        def training_step(self, batch, _):
            return self._loss(batch)

        def validation_step(self, batch, _):
            self.log("val_loss", self._loss(batch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = LMDataModule(corpus="shakespeare", tokenizer="char", context_length=16, batch_size=4)
    model = Tiny(dm.vocab_size)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4
    assert dm.train_sampler.epoch == 1  # Lightning called set_epoch on our sampler


# ==================== A damaged or wrong token cache is rebuilt, never used and never a traceback: empty, a bit-...

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
