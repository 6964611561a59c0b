"""Bad input gives one clear line, nothing is lost, unsafe files are refused: through the entry
points users call (subprocesses, as a user runs them) and through ``train()`` / ``sample.main()``
for the rest. Also what a library still raises from a user's setting (a validation interval
longer than an epoch, a full disk while torch.save writes, a non-ASCII path), output directories
Hydra cannot create, failed and stopped sweeps, damaged sweep files for the report, and bad
sampling requests."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf import OmegaConf

from llm_scratch import sample
from llm_scratch.data import corpora
from llm_scratch.errors import NonFiniteLossError, UserError, one_line
from llm_scratch.train import checkpointing
from llm_scratch.train.checkpointing import AtomicCheckpointIO
from llm_scratch.train.failures import training_errors
from llm_scratch.train.job import train
from llm_scratch.train.module import GPTLightningModule
from llm_scratch.utils import io as io_utils
from llm_scratch.utils.io import atomic_write_text
from tests.helpers import CHAR_VERDICT, CONFIG_DIR, REPO, char_checkpoint, compose_config, run_cli
from tests.reliability_helpers import Malicious

TINY = CHAR_VERDICT


def assert_one_line_error(out: subprocess.CompletedProcess, *words: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": Malicious(str(marker))}, path)
    return path


# ----------------------------------------------------------------------------- entry points
def test_cli_unknown_override_is_one_line():
    out = run_cli("training/run_experiment.py", "model.pre_normm=true")
    line = assert_one_line_error(out, "model.pre_normm", "Did you mean model.pre_norm?")
    assert "+model.pre_normm" not in line  # not the advice to add the typo


def test_cli_missing_data_path_is_one_line(tmp_path):
    out = run_cli(
        "training/run_experiment.py",
        "data=text",
        f"data.path={tmp_path / 'missing.txt'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_one_line_error(out, "missing.txt", "neither a named corpus")


@pytest.mark.slow  # two subprocesses
def test_cli_sample_refuses_malicious_checkpoint_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    out = run_cli("training/sample.py", f"ckpt_path={ckpt}", "prompt=a")
    assert_one_line_error(out, "refused", "weights_only")
    assert not marker.exists()
    # LLM_SCRATCH_TRACEBACK=1 shows the traceback instead
    out = run_cli(
        "training/sample.py", f"ckpt_path={ckpt}", "prompt=a", env={"LLM_SCRATCH_TRACEBACK": "1"}
    )
    assert out.returncode != 0 and "Traceback" in out.stderr
    assert not marker.exists()


def test_hydra_messages_become_one_line():
    text = (
        "In 'train': Could not find 'model/gpt-nanoo'\n\nAvailable options in 'model':\n"
        "\tbaby\n\tgpt-nano\nConfig search path:\n\tprovider=hydra, path=pkg://hydra.conf\n"
    )
    assert one_line(text) == (
        "In 'train': Could not find 'model/gpt-nanoo'; Available options in 'model': baby, "
        "gpt-nano."
    )


# ----------------------------------------------------------------------------- data
@pytest.mark.parametrize(
    "content,overrides,match",
    [
        (None, [], "neither a named corpus"),  # missing file
        (b"", [], "empty"),
        (b"\xff\xfe\x00bad", [], "not UTF-8"),  # unreadable as text
        (b"abcdefghij" * 3, ["data.val_fraction=0.5"], "too few|fewer than context_length"),
        (b"abcdefghij" * 10, ["data.val_fraction=0.05"], "validation split"),
    ],
    ids=["missing", "empty", "not-utf8", "too-short", "short-val-split"],
)
def test_bad_corpus_files(tmp_path, content, overrides, match):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_bytes(content)
    cfg = compose_config(
        [*TINY, "data=text", "data.tokenizer=char", f"data.path={corpus}", *overrides],
        tmp_path / "run",
    )
    with pytest.raises(UserError, match=match):
        train(cfg)


def test_folder_without_text_files(tmp_path):
    (tmp_path / "notes").mkdir()
    cfg = compose_config([*TINY, "data=text", f"data.path={tmp_path / 'notes'}"], tmp_path / "run")
    with pytest.raises(UserError, match="no .txt files"):
        train(cfg)


@pytest.mark.parametrize(
    "override,match",
    [
        ("data.corpus=nonexistent", "neither a named corpus"),
        ("data.tokenizer=gpt7", "Unknown tokenizer"),
    ],
)
def test_unknown_corpus_or_tokenizer(tmp_path, override, match):
    with pytest.raises(UserError, match=match):
        train(compose_config([*TINY, override], tmp_path / "run"))


def test_failed_download_and_bad_checksum_through_train(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    overrides = [*TINY, f"paths.data_dir={empty}", f"paths.cache_dir={tmp_path / 'cache'}"]

    def offline(url, out):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(corpora, "_download", offline)
    with pytest.raises(UserError, match="Could not download the-verdict.txt.*no network"):
        train(compose_config(overrides, tmp_path / "run1"))

    monkeypatch.setattr(corpora, "_download", lambda url, out: out.write(b"not the verdict"))
    with pytest.raises(UserError, match="sha256 .* expected"):
        train(compose_config(overrides, tmp_path / "run2"))
    assert not (tmp_path / "cache" / "the-verdict.txt").exists()


# ----------------------------------------------------------------------------- model and config
@pytest.mark.parametrize(
    "overrides,match",
    [
        (["model.n_embd=50"], "n_embd=50 is not divisible by n_head=3"),
        (["model.n_layer=0"], "n_layer=0"),
        (["model.dropout=1.5"], "dropout"),
        (
            ["model.context_length=16"],
            "model.context_length=16 is shorter than data.context_length",
        ),
        (["+model.n_layers=2"], "Unknown config key 'model.n_layers'"),
    ],
)
def test_impossible_model_or_config(tmp_path, overrides, match):
    with pytest.raises(UserError, match=match):
        train(compose_config([*TINY, *overrides], tmp_path / "run"))


@pytest.mark.parametrize(
    "override,match",
    [
        ("model.n_layer=abc", r"model\.n_layer=abc.*could not be converted to Integer"),
        ("optimizer.lr=fast", r"optimizer\.lr=fast.*could not be converted to Float"),
        ("seed=abc", r"seed=abc.*could not be converted to Integer"),
        ("scheduler.warmup_steps=1.5", r"scheduler\.warmup_steps=1\.5"),
    ],
)
def test_typed_keys_are_refused_when_the_config_is_composed(tmp_path, override, match):
    # the structured configs (llm_scratch/train/config_store.py): Hydra refuses these itself
    with pytest.raises(ConfigCompositionException) as caught:
        compose_config([*TINY, override], tmp_path / "run")
    text = str(caught.value) + " " + str(caught.value.__cause__)
    assert re.search(match, text), text


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.n_head=5"],
        ["model.attention=bad"],
        ["data.tokenizer=gpt5"],
        ["data.sampling=bad"],
        ["scheduler.name=foo"],
        ["optimizer.betas=[0.9,1.5]"],
        ["data=text", "data.path=/nonexistent/corpus.txt"],
        ["data.context_length=4096", "model.context_length=4096"],  # fails in the data setup
    ],
    ids=lambda o: o[-1].split("=")[0],
)
def test_a_failed_run_leaves_no_half_written_run_directory(tmp_path, overrides):
    run = tmp_path / "run"
    with pytest.raises((UserError, InstantiationException)):
        train(compose_config([*TINY, *overrides], run))
    assert [p for p in run.rglob("*") if p.is_file()] == []


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match="Cannot write to the run directory"):
        train(compose_config(TINY, blocker / "run"))


# ----------------------------------------------------------------------------- sampling
@pytest.fixture
def char_ckpt(tmp_path) -> Path:
    return char_checkpoint(tmp_path / "char.ckpt")


@pytest.mark.parametrize(
    "args,match",
    [
        (["prompt=hello ZQ"], "2 character\\(s\\) outside .*'Z', 'Q'"),
        (["prompt=" + "hello " * 4], "longer than the model's context of 16"),
        (["prompt=hello", "max_new_tokens=-1"], "max_new_tokens=-1"),
        (["prompt=hello", "top_p=2"], "top_p=2"),
        (["prompt=hello", "num_samplez=2"], "num_samplez"),
    ],
)
def test_sample_bad_requests(char_ckpt, capsys, args, match):
    assert sample.main([f"ckpt_path={char_ckpt}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(match, err), err


def test_sample_good_request_works(char_ckpt, capsys):
    assert sample.main([f"ckpt_path={char_ckpt}", "prompt=hello", "max_new_tokens=3"]) == 0
    assert capsys.readouterr().out.startswith("hello")


def test_sample_missing_truncated_corrupted_mismatched(tmp_path, char_ckpt, capsys):
    data = char_ckpt.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupted.ckpt").write_bytes(data[:100] + b"\x00" * 200 + data[300:])
    ckpt = torch.load(char_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["tokenizer"] = {"type": "char", "chars": list("xyz")}
    torch.save(ckpt, tmp_path / "other_tokenizer.ckpt")
    cases = {
        "missing.ckpt": "does not exist",
        "truncated.ckpt": "truncated or corrupted",
        "corrupted.ckpt": "truncated or corrupted",
        "other_tokenizer.ckpt": "does not belong with this tokenizer",
    }
    for name, match in cases.items():
        assert sample.main([f"ckpt_path={tmp_path / name}", "prompt=x"]) == 2, name
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, (name, err)


# ----------------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 4-step run (gpt-nano, char-level Verdict) with its checkpoints."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(compose_config([*TINY, "trainer.max_steps=4"], run))
    return run


def test_everything_saved_loads_with_weights_only(trained_run):
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert set(ckpt["rng_states"]) >= {"torch", "numpy", "python"}
    assert ckpt["LMDataModule"]["windows_done"] == 4 * 24
    # the callbacks' own state: the throughput logger's token count continues on resume
    (throughput,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ThroughputLogger")]
    assert throughput["tokens_seen"] == 4 * 24 * 32


def test_validate_only_uses_the_checkpoint_weights(tmp_path):
    run = tmp_path / "run"
    trained = train(compose_config([*TINY, "trainer.max_steps=4", "validate_after=true"], run))
    cfg = compose_config(
        [*TINY, "train=false", "validate_after=true", f"ckpt_path={run}"], tmp_path / "validate"
    )
    # random weights would give another loss (they were validated before the fix)
    assert train(cfg)["val/loss"] == pytest.approx(trained["val/loss"], rel=1e-6)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["model.n_layer=4"], "another model configuration.*model.n_layer=3 there but 4 here"),
        (["data.tokenizer=gpt2", "data.context_length=32"], "another tokenizer"),
    ],
)
def test_resume_with_another_configuration_is_one_line(trained_run, tmp_path, overrides, match):
    cfg = compose_config([*TINY, *overrides, f"ckpt_path={trained_run}"], tmp_path / "run")
    with pytest.raises(UserError, match=match) as info:
        train(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("ckpt", ["run", "file"])
def test_continuing_into_the_runs_own_directory_is_refused(trained_run, tmp_path, ckpt):
    """The CSV logger would start metrics.csv afresh: the earlier steps' rows would be lost."""
    before = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}
    target = trained_run if ckpt == "run" else trained_run / "checkpoints" / "last.ckpt"
    cfg = compose_config([*TINY, "trainer.max_steps=8", f"ckpt_path={target}"], trained_run)
    with pytest.raises(UserError, match="in its own directory.*hydra.run.dir at its default"):
        train(cfg)
    assert {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()} == before
    # nor into another run's directory
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "metrics.csv").write_text("step\n")
    cfg = compose_config([*TINY, f"ckpt_path={trained_run}"], other)
    with pytest.raises(UserError, match="already holds a run.*hydra.run.dir left at its default"):
        train(cfg)
    assert (other / "metrics.csv").read_text() == "step\n"


def test_resume_from_missing_truncated_or_malicious_checkpoint(trained_run, tmp_path):
    data = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 3])
    marker = tmp_path / "pwned"
    malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    cases = {
        "missing.ckpt": "does not exist",
        "truncated.ckpt": "truncated or corrupted",
        "evil.ckpt": "refused unread",
    }
    for i, (name, match) in enumerate(cases.items()):
        cfg = compose_config([*TINY, f"ckpt_path={tmp_path / name}"], tmp_path / f"run{i}")
        with pytest.raises(UserError, match=match):
            train(cfg)
    assert not marker.exists()


def test_lightning_load_state_dict_error_becomes_one_line(tmp_path):
    long = (
        "Error(s) in loading state_dict for GPTLightningModule:\n\tMissing key(s) in state_dict: "
        '"model.blocks.3.attn.qkv.weight", ...\n\tsize mismatch for ...'
    )
    with (
        pytest.raises(UserError, match="does not fit this model configuration") as info,
        training_errors(trainer=None, batch_size=8, output_dir=tmp_path),  # type: ignore[arg-type]
    ):
        raise RuntimeError(long)
    assert "\n" not in str(info.value)


def test_out_of_memory_suggests_smaller_batches(tmp_path, monkeypatch):
    def oom(self, batch, batch_idx):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 68719476736 bytes. Error code 12"
        )

    monkeypatch.setattr(GPTLightningModule, "training_step", oom)
    cfg = compose_config(
        [*TINY, "trainer.max_steps=2", "trainer.accumulate_grad_batches=2"], tmp_path / "run"
    )
    with pytest.raises(
        UserError, match="data.batch_size=24.*data.batch_size=12.*accumulate_grad_batches.*to 4"
    ):
        train(cfg)


@pytest.mark.parametrize("check_every", [1, 100], ids=["checked-each-step", "checked-at-save"])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, check_every):
    run = tmp_path / "run"
    cfg = compose_config(
        [
            *TINY,
            "trainer.max_steps=8",
            "callbacks.periodic_checkpoint.every_n_train_steps=2",
            f"callbacks.finite_loss.check_every_n_steps={check_every}",
            "+callbacks.poison._target_=tests.reliability_helpers.PoisonLoss",
            "+callbacks.poison.at_step=3",
        ],
        run,
    )
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 3 \(learning rate \d"):
        train(cfg)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    # a failure after checkpoints were saved keeps the run's config and tokenizer with them
    assert (run / "config.yaml").is_file() and (run / "tokenizer.json").is_file()


def fail_save(monkeypatch, at_call: int, error: Exception) -> list[int]:
    """torch.save writes part of a file, then raises ``error``, at its ``at_call``-th call (a full
    disk); the list counts the calls."""
    real_save = torch.save
    calls: list[int] = []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            f.write(b"partial")
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return calls


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# how torch's zip writer reports a full disk
ZIP_WRITER_FAILED = RuntimeError(
    "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"
)


@pytest.mark.parametrize("background", [False, True], ids=["written-in-place", "background"])
def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, background):
    run = tmp_path / "run"
    if background:  # the failure comes on the writer's thread, and stops the run at its next save
        monkeypatch.setattr(checkpointing, "BACKGROUND_BYTES", 0)
    fail_save(monkeypatch, 2, ENOSPC)  # the second checkpoint: half written, then the disk is full
    cfg = compose_config(
        [*TINY, "trainer.max_steps=6", "callbacks.periodic_checkpoint.every_n_train_steps=2"], run
    )
    with pytest.raises(
        UserError, match="No space left on device.*previous checkpoint there is kept"
    ):
        train(cfg)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]


def test_a_failed_last_background_write_fails_the_run_at_its_end(tmp_path, monkeypatch):
    """The write of the run's final checkpoint fails after training ended: the end of the run
    waits for it and raises the one line; no summary says the run finished."""
    monkeypatch.setattr(checkpointing, "BACKGROUND_BYTES", 0)
    run = tmp_path / "run"
    calls = fail_save(monkeypatch, 2, ENOSPC)  # step 3's, where training ends
    cfg = compose_config(
        [*TINY, "trainer.max_steps=3", "callbacks.periodic_checkpoint.every_n_train_steps=2"], run
    )
    with pytest.raises(
        UserError, match="No space left on device.*previous checkpoint there is kept"
    ):
        train(cfg)
    assert len(calls) == 2
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not (run / "summary.json").exists()


def test_atomic_checkpoint_io_loads_weights_only(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"a": torch.ones(2)}, tmp_path / "x.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "x.ckpt")["a"], torch.ones(2))
    malicious_checkpoint(tmp_path / "evil.ckpt", tmp_path / "pwned")
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        io.load_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "pwned").exists()


def test_a_background_write_holds_the_state_when_saved_and_precedes_the_removal(
    tmp_path, monkeypatch
):
    """Large checkpoints are written by a background thread: the file holds the tensors as they
    were when saved, and the best it replaces is removed only once it is written."""
    io = AtomicCheckpointIO(background_bytes=0)
    old, new = tmp_path / "best-1.ckpt", tmp_path / "best-2.ckpt"
    io.save_checkpoint({"w": torch.zeros(4)}, old)
    io.wait()
    release = threading.Event()
    real_save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        assert release.wait(timeout=60)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", slow_save)
    weights = torch.ones(4)
    io.save_checkpoint({"w": weights}, new)
    io.remove_checkpoint(old)  # what ModelCheckpoint does right after saving a new best
    weights.add_(1)  # training goes on meanwhile
    assert old.is_file() and not new.exists()  # nothing removed before its successor is in place
    release.set()
    io.teardown()
    assert not old.exists()
    assert torch.equal(io.load_checkpoint(new)["w"], torch.ones(4))


@pytest.mark.parametrize("failure", [ENOSPC, ZIP_WRITER_FAILED], ids=["disk full", "zip writer"])
def test_a_failed_background_write_is_raised_by_the_next_save_and_removes_nothing(
    tmp_path, monkeypatch, failure
):
    io = AtomicCheckpointIO(background_bytes=0)
    old, new = tmp_path / "best-1.ckpt", tmp_path / "best-2.ckpt"
    io.save_checkpoint({"w": torch.zeros(4)}, old)
    io.wait()
    fail_save(monkeypatch, 1, failure)
    io.save_checkpoint({"w": torch.ones(4)}, new)
    io.remove_checkpoint(old)
    with pytest.raises(UserError, match=r"Could not write the checkpoint .*best-2.ckpt.*kept"):
        io.save_checkpoint({"w": torch.ones(4)}, new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-1.ckpt"]  # no temporary either
    io.teardown()  # raised once: the run's end does not raise it again


def test_run_directories_differ_within_a_second():
    hydra_cfg = OmegaConf.load(Path(CONFIG_DIR) / "hydra" / "default.yaml")
    t = datetime(2026, 1, 2, 3, 4, 5, 6)
    for node in (hydra_cfg.run, hydra_cfg.sweep):
        raw = OmegaConf.to_container(node)["dir"]
        fmt = re.fullmatch(r".*/(?:runs|multiruns)/\$\{now:([^}]*)\}", raw).group(1)
        assert t.strftime(fmt) != (t + timedelta(milliseconds=1)).strftime(fmt), raw


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask_022):
    """Not mkstemp's 0600: others on a shared machine read results, checkpoints and caches."""
    atomic_write_text(tmp_path / "summary.json", "{}")
    AtomicCheckpointIO().save_checkpoint({"a": torch.ones(2)}, tmp_path / "last.ckpt")
    for name in ("summary.json", "last.ckpt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    # rewriting a file keeps its own permissions, as open(path, "w") does
    (tmp_path / "summary.json").chmod(0o640)
    atomic_write_text(tmp_path / "summary.json", "{ }")
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o640


def test_umask_is_read_with_or_without_proc(umask_022, monkeypatch):
    assert io_utils.current_umask() == 0o022
    real_open = open

    def no_proc(file, *args, **kwargs):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    assert io_utils.current_umask() == 0o022
    assert os.umask(0o022) == 0o022  # and left as it was


# ==================== One-line errors through the real entry points: output directories Hydra cannot create, fai...


def one_error_line(out: subprocess.CompletedProcess, *words: str, code: int = 2) -> str:
    """The single ``error:`` line of a run that failed with ``code`` and no traceback."""
    assert out.returncode == code, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


# ----------------------------------------------------------------------------- output directories
@pytest.mark.parametrize(
    "args,words",
    [
        (["hydra.run.dir={blocker}/run"], ["{blocker}/run", "a file, not a directory"]),
        (["paths.log_dir={blocker}/x"], ["{blocker}/x/train/runs/", "paths.log_dir=<dir>"]),
        (["-m", "paths.log_dir={blocker}/x"], ["{blocker}/x/train/multiruns/", "{blocker}:"]),
    ],
    ids=["run_dir", "log_dir", "log_dir_multirun"],
)
def test_uncreatable_output_dir_is_one_line(tmp_path, args, words):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = run_cli(
        "training/run_experiment.py", *(a.format(blocker=blocker) for a in args), "model=gpt-nano"
    )
    one_error_line(
        out, "Cannot create the output directory", *(w.format(blocker=blocker) for w in words)
    )


# ----------------------------------------------------------------------------- sweeps
def test_failed_sweep_job_is_one_line_and_its_output_is_kept(tmp_path):
    sweep = tmp_path / "sweep"
    # fails in the job, before any training, on what only the job finds (a missing corpus
    # file; a value out of range is refused before the sweep starts)
    missing = tmp_path / "missing.txt"
    out = run_cli(
        "training/run_experiment.py",
        "-m",
        "data=text",
        f"data.path={missing}",
        f"hydra.sweep.dir={sweep}",
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Error executing job" not in out.stderr, out.stderr
    # the job's own error line, then the sweep's
    child, last = out.stderr.strip().splitlines()[-2:]
    assert child.startswith("error: ") and "missing.txt" in child, out.stderr
    assert last.startswith(f"error: Sweep job #0 (data=text data.path={missing})"), last
    assert f"{sweep / '0' / 'job_output.log'}" in last and "1 of 1 job(s) failed" in last
    assert child in (sweep / "0" / "job_output.log").read_text()
    # the sweep directory in full, at the start and with the report command at the end
    assert f"Sweep directory: {sweep}\n" in out.stdout, out.stdout
    assert f"report: python training/report.py {sweep}" in out.stdout, out.stdout


def test_gpu_parallel_sweep_without_gpus_is_one_line(tmp_path):
    out = run_cli(
        "training/run_experiment.py",
        "-m",
        "hydra/launcher=gpu_parallel",
        "model=gpt-nano",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    one_error_line(out, "devices_per_job=1 but only 0 GPU(s)", "devices_per_job=null")


@pytest.mark.slow  # a sweep that trains until it is stopped
def test_sigterm_to_a_sweep_stops_its_job_with_a_checkpoint(tmp_path):
    sweep = tmp_path / "sweep"
    environ = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    parent = subprocess.Popen(
        [
            sys.executable,
            "training/run_experiment.py",
            "-m",
            "model=gpt-nano",
            "data.tokenizer=char",
            "data.context_length=32",
            "data.batch_size=8",
            "trainer.accelerator=cpu",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_model_summary=false",
            "trainer.max_steps=100000",
            "+callbacks.throttle._target_=tests.reliability_helpers.Throttle",
            "+callbacks.throttle.seconds=0.1",
            "model.pre_norm=true,false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = sweep / "0" / "job_output.log"
    deadline = time.monotonic() + 120
    # the job is training once it has printed its batches per epoch
    while not (output.is_file() and "batches per epoch" in output.read_text()):
        assert parent.poll() is None, parent.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # the job runs from a thread of the sweep: its children are listed under that thread
    tasks = Path(f"/proc/{parent.pid}/task").glob("*/children")
    children = [pid for task in tasks for pid in task.read_text().split()]
    assert len(children) == 1, children
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=120)

    assert parent.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: Sweep stopped by SIGTERM"), err[-3000:]
    assert f"hydra.sweep.dir={sweep}" in last and "#1 did not start" in last, last
    assert not Path(f"/proc/{children[0]}").exists(), "the job outlived the sweep"
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file()
    assert not (sweep / "1").exists()


# ----------------------------------------------------------------------------- sweep reports
def damaged_sweep(root: Path) -> Path:
    """A one-job sweep directory whose job was killed while writing its last metrics row and
    its last sample."""
    job = root / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- model.pre_norm=false\n")
    (job / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n0,0,10.5,\n0,1,9.5,9.8\n0,2,9.4e"
    )
    (job / "samples.jsonl").write_text('{"step": 1, "text": "Every effort"}\n{"step": 2, "te')
    return root / "sweep"


def test_report_skips_damaged_rows_and_lines_with_a_warning(tmp_path, caplog):
    from llm_scratch.report import collect_jobs

    (job,), _ = collect_jobs(damaged_sweep(tmp_path))
    assert job.train_curve == [(0, 10.5), (1, 9.5)] and job.val_curve == [(1, 9.8)]
    assert job.sample == "Every effort"
    warnings = [r.getMessage() for r in caplog.records]
    assert any("1 damaged row(s)" in w and "metrics.csv" in w for w in warnings), warnings
    assert any("1 damaged line(s)" in w and "samples.jsonl" in w for w in warnings), warnings


def test_report_to_an_unwritable_out_is_one_line(tmp_path):
    sweep = damaged_sweep(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out_dir in (blocker, blocker / "sub"):
        out = run_cli("training/report.py", str(sweep), "--out", str(out_dir))
        one_error_line(out, f"Cannot write the report to {out_dir}", "--out DIR")


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize(
    "args,match",
    [
        (["device=gpu"], "device=gpu is not a device torch knows: use cpu, cuda"),
        (["num_samples=0"], "num_samples=0 is out of range: it must be >= 1"),
        (["num_samples=-2"], "num_samples=-2 is out of range: it must be >= 1"),
    ],
)
def test_sample_bad_device_or_count_is_one_line(tmp_path, capsys, args, match):
    from llm_scratch import sample

    ckpt = char_checkpoint(tmp_path / "char.ckpt")
    assert sample.main([f"ckpt_path={ckpt}", "prompt=hello", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err


def test_sample_on_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    import torch

    from llm_scratch import sample

    ckpt = char_checkpoint(tmp_path / "char.ckpt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device in ("cuda", "cuda:1"):
        assert sample.main([f"ckpt_path={ckpt}", "prompt=hello", f"device={device}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"device={device} but" in err and "device=cpu" in err


def test_sample_from_a_file_that_is_no_checkpoint_says_so(tmp_path, capsys):
    from llm_scratch import sample

    notes = tmp_path / "notes.txt"
    notes.write_text("hello, these are my notes\n")
    assert sample.main([f"ckpt_path={notes}", "prompt=hello"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{notes} is not a checkpoint" in err, err
    assert "refused" not in err


# ----------------------------------------------------------------------------- sweep without -m
@pytest.mark.parametrize("in_sweep", [False, True], ids=["single_run", "sweep_job"])
def test_a_sweep_started_without_m_warns(tmp_path, in_sweep):
    env = {"LLM_SCRATCH_SWEEP_ID": "train-x"} if in_sweep else {}
    # a missing data file ends the run right after the warning
    overrides = ["experiment=ablation_norm_cpu", "data=text", f"data.path={tmp_path / 'no.txt'}"]
    out = run_cli(
        "training/run_experiment.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}", env=env
    )
    one_error_line(out, "no.txt")
    warned = "defines a sweep over seed, model.pre_norm" in out.stdout + out.stderr
    assert warned != in_sweep, out.stdout  # a sweep's own jobs are single runs: no warning
    if not in_sweep:
        assert f"python training/run_experiment.py -m {' '.join(overrides)}" in out.stdout


# ==================== What a library still raises from a user's setting comes out as one line: a validation inte...

TINY_4_STEPS = [
    *CHAR_VERDICT,
    "trainer.max_steps=4",
]


def test_a_validation_interval_longer_than_an_epoch_says_how(tmp_path):
    with pytest.raises(
        UserError,
        match=r"val_check_interval=100000 is more than the 23 .*"
        r"check_val_every_n_epoch=null",
    ) as info:
        train(compose_config([*TINY_4_STEPS, "trainer.val_check_interval=100000"], tmp_path / "a"))
    assert "\n" not in str(info.value)
    # and the way it names works: every 3 batches across epochs
    overrides = [
        *TINY_4_STEPS,
        "trainer.val_check_interval=3",
        "trainer.check_val_every_n_epoch=null",
    ]
    train(compose_config(overrides, tmp_path / "b"))


def test_a_full_disk_inside_torch_save_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as RuntimeError (inline_container.cc)."""
    run = tmp_path / "run"
    fail_save(monkeypatch, 2, ZIP_WRITER_FAILED)
    cfg = compose_config(
        [
            *TINY_4_STEPS,
            "trainer.max_steps=6",
            "callbacks.periodic_checkpoint.every_n_train_steps=2",
        ],
        run,
    )
    with pytest.raises(UserError, match=r"Could not write the checkpoint .*MiB free.*kept"):
        train(cfg)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]


def test_a_non_ascii_path_says_to_quote_it(tmp_path):
    out = run_cli(
        "training/run_experiment.py", *TINY_4_STEPS, "data=text", "data.path=/data/ünï/côde.txt"
    )
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "quote" in lines[0] and "data.path='/data/ünï/côde.txt'" in lines[0], lines[0]


def test_init_from_a_hub_name_offline_fails_at_once(tmp_path, monkeypatch):
    import socket
    import time

    from llm_scratch import hub

    def no_network(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(hub, "_cached", lambda name: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "")  # restored after the test
    start = time.monotonic()
    with pytest.raises(UserError, match=r"init_from=gpt2: cannot reach huggingface.co .*cache"):
        train(compose_config([*TINY_4_STEPS, "init_from=gpt2"], tmp_path / "run"))
    assert time.monotonic() - start < 20
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*"))
    # cached: the cached files are used, without retrying the network
    monkeypatch.setattr(hub, "_cached", lambda name: True)
    hub.check_hub_name("gpt2")
    assert __import__("os").environ["HF_HUB_OFFLINE"] == "1"
    # a path is never probed as a hub name (a missing one gets the loader's own error)
    assert hub.looks_like_a_path("/data/gpt2") and hub.looks_like_a_path("./gpt2")
    assert hub.looks_like_a_path("runs/a/b") and not hub.looks_like_a_path("openai-community/gpt2")
    assert not hub.looks_like_a_path("gpt2")


def test_a_model_too_large_for_memory_is_one_line_while_it_is_built(tmp_path, monkeypatch):
    # 12 * 2**40 weights (48 TiB): the allocator refuses while the model is built, before
    # training (and its out-of-memory message about batches) starts
    big = ["model.n_layer=1", "model.n_head=1", "model.n_embd=1048576"]
    with pytest.raises(UserError, match=r"model.n_embd=1048576.*weights alone take"):
        train(compose_config([*TINY_4_STEPS, *big], tmp_path / "run"))  # by its size, at once
    from llm_scratch.train import validate

    monkeypatch.setattr(validate, "memory_bytes", lambda: None)  # where memory is not known
    with pytest.raises(UserError, match=r"Out of memory while building the model \(n_layer=1"):
        train(compose_config([*TINY_4_STEPS, *big], tmp_path / "run"))
    assert not any((tmp_path / "run").rglob("*"))
