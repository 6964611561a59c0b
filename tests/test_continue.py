"""Continuing a run with its own config: ``ckpt_path=<run>`` alone continues it as it was
configured (its data, tokenizer, model, optimizer ...), the overrides given now apply on top, a
change to what is trained is refused unless meant (``continue_with_changes=true``), and the
commands a run prints run as they are copied."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from llm_scratch.errors import UserError
from llm_scratch.train.commands import override
from llm_scratch.train.compose import (
    check_continuation,
    config_changes,
    expand_argv,
    global_batch,
    with_saved_overrides,
)
from llm_scratch.train.job import next_commands, train
from tests.helpers import FAST, by_step, compose_config, run_cli

SCRIPT = "training/run_experiment.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A text corpus that is not The Verdict (the default data)."""
    path = tmp_path_factory.mktemp("data") / "code.txt"
    path.write_text("def add(x, y):\n    return x + y\n\n" * 120, encoding="utf-8")
    return path


def base(corpus: Path) -> list[str]:
    return [
        *FAST,
        "data=text",
        f"data.path={corpus}",
        "data.tokenizer=char",
        "data.context_length=32",
        "data.stride=null",
        "data.batch_size=16",
        "trainer.limit_val_batches=1",
        "callbacks.text_sampler=null",
        "trainer.enable_progress_bar=false",
    ]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, corpus) -> Path:
    """Two steps on code.txt, char-level."""
    run = tmp_path_factory.mktemp("first") / "run"
    train(compose_config([*base(corpus), "trainer.max_steps=2"], run))
    return run


def saved_config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


@pytest.mark.parametrize("spec", ["dir", "file"])
def test_ckpt_path_alone_continues_with_the_runs_own_config(tmp_path, first_run, corpus, spec):
    # before: the defaults' data (The Verdict, GPT-2's tokenizer) and model; the char tokenizer
    # of code.txt was then refused, other data silently trained on
    target = first_run if spec == "dir" else first_run / "checkpoints" / "last.ckpt"
    continued = tmp_path / "continued"
    train(compose_config([f"ckpt_path={target}", "trainer.max_steps=4"], continued))
    config = saved_config(continued)
    assert config["data"]["path"] == str(corpus) and config["data"]["tokenizer"] == "char"
    assert config["model"]["n_layer"] == 3  # gpt-nano, not the default gpt-mini
    assert config["trainer"]["max_steps"] == 4
    assert sorted(by_step(continued, "train/loss")) == [3, 4]
    # the continuation's own record holds the whole config, so it continues the same way
    overrides = yaml.safe_load((continued / ".hydra" / "overrides.yaml").read_text())
    assert f"data.path={corpus}" in overrides and overrides[-1] == "trainer.max_steps=4"
    again = tmp_path / "again"
    train(compose_config([f"ckpt_path={continued}", "trainer.max_steps=5"], again))
    assert saved_config(again)["data"]["path"] == str(corpus)
    assert sorted(by_step(again, "train/loss")) == [5]


def test_the_start_up_line_lists_what_differs(tmp_path, first_run, caplog):
    caplog.set_level(logging.INFO, logger="llm_scratch.train.job")
    overrides = [f"ckpt_path={first_run}", "trainer.max_steps=3", "trainer.limit_val_batches=2"]
    train(compose_config(overrides, tmp_path / "continued"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Continuing")]
    assert len(lines) == 1, caplog.text
    assert "trainer.max_steps: 2 -> 3" in lines[0]
    assert "trainer.limit_val_batches: 1 -> 2" in lines[0]
    summary = (tmp_path / "continued" / "summary.json").read_text()
    assert '"trainer.max_steps": [' in summary  # continued_from records the changes


@pytest.mark.parametrize(
    "change,words",
    [
        ("optimizer.lr=0.001", "another optimizer (optimizer.lr=0.0004 there but 0.001 here)"),
        ("scheduler.name=constant", "another schedule (scheduler.name='cosine' there"),
        ("seed=7", "another seed (seed=1337 there but 7 here)"),
        ("data.tokenizer=gpt2", "another tokenizer (data.tokenizer='char' there but 'gpt2'"),
        ("data.val_fraction=0.2", "other data (data.val_fraction=0.1 there but 0.2 here)"),
        ("trainer.precision=bf16-mixed", "another precision (trainer.precision='32-true'"),
        ("model.n_layer=4", "another model configuration (model.n_layer=3 there but 4 here)"),
    ],
)
def test_a_change_to_what_is_trained_is_refused_in_one_line(tmp_path, first_run, change, words):
    run = tmp_path / "continued"
    with pytest.raises(UserError) as info:
        train(compose_config([f"ckpt_path={first_run}", change], run))
    message = str(info.value)
    assert words in message and "continue_with_changes=true" in message, message
    assert "\n" not in message
    assert not run.exists()  # nothing left behind


def test_a_run_that_reached_its_length_says_to_give_a_new_one(tmp_path, first_run):
    # with its own config the run would train no step at all (its max_steps is reached)
    with pytest.raises(UserError, match=r"at step 2, and trainer.max_steps=2: nothing left.*=4"):
        train(compose_config([f"ckpt_path={first_run}"], tmp_path / "continued"))
    assert not (tmp_path / "continued").exists()


def test_a_change_that_is_meant_is_allowed(tmp_path, first_run):
    run = tmp_path / "continued"
    overrides = [f"ckpt_path={first_run}", "optimizer.lr=0.001", "trainer.max_steps=3"]
    train(compose_config([*overrides, "continue_with_changes=true"], run))
    assert saved_config(run)["optimizer"]["lr"] == 0.001
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["hyper_parameters"]["optimizer"]["lr"] == 0.001


def test_a_loose_checkpoint_is_compared_by_its_hyper_parameters(tmp_path, first_run, corpus):
    loose = tmp_path / "loose.ckpt"
    shutil.copy(first_run / "checkpoints" / "last.ckpt", loose)
    run = tmp_path / "continued"
    with pytest.raises(UserError, match=r"another optimizer \(optimizer.lr=0.0004 there but 0.01"):
        train(compose_config([*base(corpus), f"ckpt_path={loose}", "optimizer.lr=0.01"], run))
    train(compose_config([*base(corpus), f"ckpt_path={loose}", "trainer.max_steps=3"], run))


def test_saved_overrides_go_first_and_the_given_ones_win(first_run, corpus):
    given = [f"ckpt_path={first_run}", "trainer.max_steps=9", "+new.key=1"]
    expanded = with_saved_overrides(given)
    assert expanded[-3:] == given
    inherited = expanded[:-3]
    assert f"data.path={corpus}" in inherited and "trainer.max_steps=2" not in inherited
    assert not any(o.startswith(("hydra.", "ckpt_path")) for o in inherited)
    # a sweep continues its jobs itself; a run without ckpt_path is as given
    argv = [SCRIPT, "-m", f"ckpt_path={first_run}"]
    assert expand_argv(argv) == argv
    assert with_saved_overrides(["model=gpt-nano"]) == ["model=gpt-nano"]


def test_a_group_chosen_again_does_not_inherit_the_runs_values_of_it(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")  # only looked for, not read, here
    saved = ["trainer=fsdp", "trainer.devices=2", "trainer.strategy.activation_checkpointing=true"]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*saved, "seed=3"]))
    given = [f"ckpt_path={run}", "trainer=ddp", "trainer.devices=1"]
    # the fsdp trainer's own key would not exist in trainer=ddp: not inherited with it
    assert with_saved_overrides(given) == ["seed=3", *given]


def test_a_callback_the_run_added_can_be_removed_when_continuing(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")  # only looked for, not read, here
    added = [
        "+callbacks.kill._target_=tests.reliability_helpers.KillAt",
        "+callbacks.kill.at_step=3",
    ]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(added))
    # the deletion (no "=") comes after the additions it undoes, not before them
    argv = [SCRIPT, f"ckpt_path={run}", "~callbacks.kill"]
    assert expand_argv(argv) == [SCRIPT, *added, *argv[1:]]


def test_the_same_global_batch_split_over_other_processes_is_not_a_change():
    one = {"data": {"batch_size": 16}, "trainer": {"devices": 1}}
    two = {"data": {"batch_size": 8}, "trainer": {"devices": 2}}
    assert global_batch(one) == global_batch(two) == 16
    changes = config_changes(one, two)
    check_continuation(changes, "run", allowed=False, same_global_batch=True)  # not refused
    halved = {"data": {"batch_size": 8}, "trainer": {"devices": 1}}
    assert global_batch(halved) == 8
    with pytest.raises(UserError, match=r"other data \(data.batch_size=16 there but 8 here\)"):
        check_continuation(config_changes(one, halved), "run", allowed=False)
    assert global_batch({"data": {"batch_size": 8}, "trainer": {"devices": "auto"}}) is None


def shell_words(line: str) -> list[str]:
    """The arguments bash makes of a command line (as a user's shell runs it)."""
    out = subprocess.run(
        ["bash", "-c", "printf '%s\\0' " + line], capture_output=True, text=True, check=True
    )
    return out.stdout.split("\0")[:-1]


@pytest.mark.parametrize("name", ["plain", "with space", "quote'd", "new\nline", "semi;colon"])
def test_printed_commands_parse_back_to_the_run_directory(tmp_path, name):
    run = tmp_path / name
    lines = next_commands(run).splitlines()
    assert len(lines) == 4  # a newline in the name does not break a line
    for label, script in (("continue:", SCRIPT), ("sample:", "training/sample.py")):
        line = next(ln for ln in lines if ln.strip().startswith(label))
        argv = shell_words(line.split(label, 1)[1])
        assert argv[:2] == ["python", script]
        if script == SCRIPT:
            value = OverridesParser.create().parse_override(argv[2]).value()
        else:
            value = argv[2].partition("=")[2]
        assert value == str(run), line
    report = next(ln for ln in lines if "report:" in ln)
    assert shell_words(report.split("report:", 1)[1])[2] == str(run)


@pytest.mark.slow
def test_the_printed_continue_command_runs_as_copied(tmp_path, corpus):
    """End to end through the entry point: the continue line a finished run prints, run as it
    is (in a directory whose name needs quoting), continues that run with its own config."""
    env = {"LLM_SCRATCH_LOG_DIR": str(tmp_path / "logs")}
    run = tmp_path / "a run's dir"
    where = override("hydra.run.dir", run)
    out = run_cli(SCRIPT, *base(corpus), "trainer.max_steps=2", where, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    console = out.stdout + out.stderr
    line = next(ln for ln in console.splitlines() if ln.strip().startswith("continue:"))
    argv = shell_words(line.split("continue:", 1)[1])
    assert argv[0] == "python" and "<" not in line
    again = run_cli(argv[1], *argv[2:], env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    console = again.stdout + again.stderr
    assert "could not find the monitored key" not in console  # a continued run is quiet too
    assert "Continuing" in console and "trainer.max_steps: 2 -> 4" in console
    (continued,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert saved_config(continued)["data"]["path"] == str(corpus)
    assert sorted(by_step(continued, "train/loss")) == [3, 4]


@pytest.mark.slow
def test_a_start_that_fails_before_training_leaves_no_directory(tmp_path, first_run):
    """A missing corpus, a refused value, a refused continuation: exit 2, one line, and no run
    directory left under the log directory; a folder the user made is left as it was."""
    env = {"LLM_SCRATCH_LOG_DIR": str(tmp_path / "logs")}
    for args in (
        ["data=text", f"data.path={tmp_path / 'missing.txt'}"],
        ["scheduler.name=onecycle"],
        [f"ckpt_path={first_run}", "optimizer.lr=0.5"],
    ):
        out = run_cli(SCRIPT, *FAST, *args, env=env)
        assert out.returncode == 2, out.stderr[-3000:]
        assert "Traceback" not in out.stderr
        runs = tmp_path / "logs" / "train" / "runs"
        assert not runs.exists() or not list(runs.iterdir()), (args, list(runs.iterdir()))
    mine = tmp_path / "mine"
    mine.mkdir()
    out = run_cli(SCRIPT, *FAST, "scheduler.name=onecycle", f"hydra.run.dir={mine}", env=env)
    assert out.returncode == 2 and mine.is_dir()


def test_stale_temporaries_of_the_continued_run_are_removed(tmp_path, first_run, corpus):
    """A SIGKILL during a save leaves a checkpoint-sized .last.ckpt.<random>.tmp; continued
    elsewhere, the old run never saves again: its temporaries go when it is continued (only our
    own naming, and only when the run that made them is gone)."""
    old = tmp_path / "old"
    shutil.copytree(first_run, old)
    temp = old / "checkpoints" / ".last.ckpt.a1b2c3d4.tmp"
    temp.write_bytes(b"x" * 1000)
    other = old / "checkpoints" / "notes.tmp"  # not our naming: never touched
    other.write_text("mine")
    # the claim of a process on this machine that has ended
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    claim = (old / ".run.claim").read_text().split(" ", 2)
    (old / ".run.claim").write_text(f"pid {gone.stdout.strip()} {claim[2]}")
    train(compose_config([f"ckpt_path={old}", "trainer.max_steps=3"], tmp_path / "continued"))
    assert not temp.exists() and other.read_text() == "mine"
    # a temporary of a run still going (this process's pid in the claim, the file fresh) stays
    (old / ".run.claim").write_text(f"pid {os.getppid()} {claim[2]}")
    temp.write_bytes(b"x")
    train(compose_config([f"ckpt_path={old}", "trainer.max_steps=3"], tmp_path / "again"))
    assert temp.exists()
