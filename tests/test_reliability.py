"""Bad input gives one clear line, nothing is lost, unsafe files are refused: through the entry
points users call (a few subprocesses) and through ``train()`` / ``sample.main()`` for the rest.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
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
from llm_scratch.train.checkpointing import AtomicCheckpointIO
from llm_scratch.train.failures import training_errors
from llm_scratch.train.job import train
from llm_scratch.train.module import GPTLightningModule
from llm_scratch.utils import io as io_utils
from llm_scratch.utils.io import atomic_write_text
from tests.helpers import CHAR_VERDICT, CONFIG_DIR, char_checkpoint, compose_config, run_cli
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


def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint: half written, then the disk is full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
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


def test_atomic_checkpoint_io_loads_weights_only(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"a": torch.ones(2)}, tmp_path / "x.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "x.ckpt")["a"], torch.ones(2))
    malicious_checkpoint(tmp_path / "evil.ckpt", tmp_path / "pwned")
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        io.load_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "pwned").exists()


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
