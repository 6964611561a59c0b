"""Nothing overwritten, mixed or lost: a refused run leaves an earlier run's directory byte for
byte, two runs never share a directory, a folder that is not a run is not written over. Real
files and real processes (the entry point, two at once)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llm_scratch.errors import UserError
from llm_scratch.train.job import train
from llm_scratch.train.run_dir import CLAIM, claim_run_dir
from tests.helpers import CHAR_VERDICT, REPO, compose_config, read_metrics, run_cli

TINY = [
    *CHAR_VERDICT,
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
]
SCRIPT = "training/run_experiment.py"


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory``: its bytes and modification time."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def one_error_line(out: subprocess.CompletedProcess, *words: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, out.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    out = run_cli(SCRIPT, *TINY, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    return run


def test_the_job_writes_hydra_files_after_claiming(cli_run):
    overrides = yaml.safe_load((cli_run / ".hydra" / "overrides.yaml").read_text())
    assert overrides == TINY  # the task's overrides, as Hydra writes them
    config = yaml.safe_load((cli_run / ".hydra" / "config.yaml").read_text())
    assert config["data"]["batch_size"] == 24 and "hydra" not in config
    hydra = yaml.safe_load((cli_run / ".hydra" / "hydra.yaml").read_text())
    assert hydra["hydra"]["run"]["dir"] == str(cli_run)
    assert hydra["hydra"]["overrides"]["task"] == overrides
    assert (cli_run / CLAIM).read_text().startswith("pid ")


@pytest.mark.parametrize(
    "extra",
    [["ckpt_path={run}"], ["data.batch_size=0"], ["trainer.max_steps=8"]],
    ids=["continue-into-itself", "bad-value", "same-dir-again"],
)
def test_a_refused_run_leaves_the_earlier_run_byte_for_byte(cli_run, extra):
    before = snapshot(cli_run)
    args = [a.format(run=cli_run) for a in extra]
    out = run_cli(SCRIPT, *TINY, *args, f"hydra.run.dir={cli_run}")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert snapshot(cli_run) == before


@pytest.mark.parametrize(
    "files",
    [["config.yaml"], ["tokenizer.json"], ["summary.json", "hparams.yaml"], ["notes/a.txt"]],
)
def test_a_folder_that_is_not_a_run_is_refused_untouched(tmp_path, files):
    folder = tmp_path / "mine"
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"the user's own {name}\n")
    before = snapshot(folder)
    with pytest.raises(UserError, match="is not empty.*Choose a new or empty hydra.run.dir"):
        train(compose_config(TINY, folder))
    assert snapshot(folder) == before


def test_an_empty_folder_or_one_with_only_logs_is_used(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "train.log").write_text("an earlier attempt refused on its config\n")
    train(compose_config([*TINY, "trainer.max_steps=1"], folder))
    assert (folder / "checkpoints" / "last.ckpt").is_file()


def test_a_stale_claim_is_refused_with_its_holder(tmp_path):
    folder = tmp_path / "run"
    claim_run_dir(folder, None)
    with pytest.raises(UserError, match=r"claimed by another run \(pid \d+ on .*delete .*claim"):
        claim_run_dir(folder, None)


def test_a_failed_run_leaves_its_directory_usable_again(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(UserError):  # fails in the data setup, after the claim
        train(
            compose_config([*TINY, "data.context_length=4096", "model.context_length=4096"], folder)
        )
    assert [p for p in folder.rglob("*")] == []
    claim_run_dir(folder, None)


def test_two_runs_started_at_once_in_one_directory(tmp_path):
    """Two real processes, the same hydra.run.dir: one trains, the other is refused in one line,
    and metrics.csv holds one run's rows."""
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [sys.executable, SCRIPT, *TINY, f"hydra.run.dir={run}"]
    processes = [
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    for p in processes:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    lines = [ln for ln in refused.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in refused, refused[-3000:]
    assert "claimed by another run" in lines[0] or "already holds a run" in lines[0], lines[0]
    steps = [int(r["step"]) for r in read_metrics(run) if r.get("train/loss")]
    assert steps == sorted(set(steps)) and len(steps) == 4, steps


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    """SIGINT (Ctrl-C) on a single run: last.ckpt of the batch it stopped at, one line naming
    the continue command, exit status 130; the run then continues from it."""
    import signal

    import torch

    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        SCRIPT,
        *TINY,
        "trainer.max_steps=200",
        "trainer.val_check_interval=20",
        "+callbacks.throttle._target_=tests.reliability_helpers.Throttle",
        "+callbacks.throttle.seconds=0.2",
        "+callbacks.throttle.where=start",
        f"hydra.run.dir={run}",
    ]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    metrics = run / "metrics.csv"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 3):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Ctrl-C" in lines[0] and f"ckpt_path={run}" in lines[0], err
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 3 <= saved < 200 and f"saved checkpoints/last.ckpt at step {saved}" in lines[0]
    # the printed command works
    out = run_cli(
        SCRIPT,
        *TINY,
        f"trainer.max_steps={saved + 1}",
        f"ckpt_path={run}",
        f"hydra.run.dir={tmp_path / 'continued'}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert [
        int(r["step"]) for r in read_metrics(tmp_path / "continued") if r.get("train/loss")
    ] == [saved + 1]


# ----------------------------------------------------------------------------- item 7
@pytest.mark.parametrize("ours", [True, False], ids=["atomic", "lightning"])
def test_metrics_csv_survives_a_crash_while_a_new_column_is_added(tmp_path, monkeypatch, ours):
    """Lightning rewrites metrics.csv when a metric gets its first value; a crash then (here: in
    the middle of writing the rows again) emptied the file. Ours keeps every row."""
    import csv

    from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger

    from llm_scratch.train.csv_logger import CSVLogger

    logger = (CSVLogger if ours else LightningCSVLogger)(tmp_path, name="", version="")
    for step in range(3):
        logger.log_metrics({"train/loss": 3.0 - step}, step=step)
    logger.save()
    before = (tmp_path / "metrics.csv").read_text()
    assert len(before.splitlines()) == 4

    def crash(self, rows):
        raise KeyboardInterrupt  # the process is stopped mid-rewrite

    monkeypatch.setattr(csv.DictWriter, "writerows", crash)
    logger.log_metrics({"train/loss": 0.5, "val/loss": 1.0}, step=3)
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    after = (tmp_path / "metrics.csv").read_text()
    if ours:
        assert after == before
        assert not list(tmp_path.glob(".metrics.csv.*"))
    else:  # what the atomic rewrite prevents
        assert len(after.splitlines()) == 1


def test_checkpoint_temporaries_left_by_a_kill_are_removed(tmp_path):
    """A SIGKILL mid-save leaves .last.ckpt.<random>.tmp next to last.ckpt; the next save removes
    it, and nothing reads it meanwhile (resume and sample take last.ckpt)."""
    import torch

    from llm_scratch.checkpoint import resolve_checkpoint
    from llm_scratch.train.checkpointing import AtomicCheckpointIO

    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, checkpoints / "last.ckpt")
    stale = checkpoints / ".last.ckpt.x1y2z3.tmp"
    stale.write_bytes(b"half a checkpoint")
    for purpose in ("resume", "sample"):
        assert resolve_checkpoint(str(tmp_path / "run"), purpose) == checkpoints / "last.ckpt"
    io.save_checkpoint({"global_step": 2}, checkpoints / "last.ckpt")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 2


def test_sample_takes_the_lowest_validation_loss_of_several_best_checkpoints(tmp_path):
    """save_top_k > 1 keeps several best-*.ckpt: sample.py takes the lowest val/loss, not the
    latest step."""
    import re

    from llm_scratch.checkpoint import resolve_checkpoint

    run = tmp_path / "run"
    overrides = [
        *TINY,
        "trainer.max_steps=8",
        "callbacks.model_checkpoint.save_top_k=3",
        "optimizer.lr=0.05",  # too high: the loss rises again, so the best is not the latest
    ]
    train(compose_config(overrides, run))
    best = sorted((run / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 3, best
    vals = {p: float(re.search(r"-val([0-9.]+)\.ckpt$", p.name)[1]) for p in best}
    chosen = resolve_checkpoint(str(run), "sample")
    assert chosen == min(vals, key=vals.get)
    # and by name alone, whichever step is highest
    for step, val in ((2, "2.5000"), (4, "2.1000"), (6, "2.3000")):
        (tmp_path / "named" / "checkpoints").mkdir(parents=True, exist_ok=True)
        (tmp_path / "named" / "checkpoints" / f"best-step{step:06d}-val{val}.ckpt").write_bytes(b"")
    chosen = resolve_checkpoint(str(tmp_path / "named"), "sample")
    assert chosen.name == "best-step000004-val2.1000.ckpt"


# ------------------------------------------------- messages that promise only what is there
def _stopped_trainer(saved_step: int | None, global_step: int = 5):
    from types import SimpleNamespace

    from llm_scratch.train.callbacks import SigtermCheckpoint

    callback = SigtermCheckpoint(dirpath="unused")
    callback.saved_step = saved_step
    return SimpleNamespace(callbacks=[callback], global_step=global_step)


@pytest.mark.parametrize("ctrl_c", [True, False], ids=["ctrl-c", "sigterm"])
def test_a_stop_message_promises_only_a_checkpoint_that_exists(tmp_path, ctrl_c):
    import torch

    from llm_scratch.train.commands import continue_command
    from llm_scratch.train.failures import stop_message

    run = tmp_path / "run"
    run.mkdir()
    # during the first validation: nothing saved, nothing kept, nothing to continue from
    message = stop_message(_stopped_trainer(None), run, ctrl_c)
    assert "kept" not in message and "ckpt_path" not in message, message
    assert "before any checkpoint was saved" in message and "start the run again" in message
    # during a later validation: the periodic checkpoint that is there, by its step
    (run / "checkpoints").mkdir()
    torch.save({"global_step": 4}, run / "checkpoints" / "last.ckpt")
    message = stop_message(_stopped_trainer(None), run, ctrl_c)
    assert "checkpoints/last.ckpt, of step 4, is kept" in message
    assert message.endswith(continue_command(run)), message
    # saved on the way out
    message = stop_message(_stopped_trainer(5), run, ctrl_c)
    assert "saved checkpoints/last.ckpt at step 5" in message


def test_a_stopped_sweep_job_names_no_command_of_its_own(tmp_path, monkeypatch):
    """A sweep prints one command, the sweep's: its job's line points there."""
    import torch

    from llm_scratch.sweep_env import SWEEP_ID_ENV
    from llm_scratch.train.failures import stop_message

    (tmp_path / "checkpoints").mkdir()
    torch.save({"global_step": 4}, tmp_path / "checkpoints" / "last.ckpt")
    monkeypatch.setenv(SWEEP_ID_ENV, "sweep-1")
    message = stop_message(_stopped_trainer(5), tmp_path, ctrl_c=False)
    assert "python" not in message and "sweep's own command continues it" in message


def test_a_checkpoint_too_big_for_the_disk_promises_no_earlier_one(tmp_path, monkeypatch):
    import errno

    import torch

    from llm_scratch.train.checkpointing import AtomicCheckpointIO

    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    checkpoints = tmp_path / "run" / "checkpoints"
    with pytest.raises(UserError) as info:
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, checkpoints / "last.ckpt")
    message = str(info.value)
    assert "No space left on device" in message and "kept" not in message, message
    assert "no checkpoint of this run was saved before it" in message
    assert "ckpt_path" not in message and "start the run again" in message
    assert list(checkpoints.iterdir()) == []  # nor the temporary file


@pytest.mark.parametrize("fails_at", [0, 1, 3], ids=["claim", "first-hydra-file", "last"])
def test_a_full_disk_while_claiming_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, fails_at):
    """The claim and .hydra/ are written in turn; the disk fills at any one of them: one line,
    no claim, no half-written .hydra/, and the directory can be claimed again."""
    import errno

    import llm_scratch.utils.io as io

    folder = tmp_path / "run"
    cfg = compose_config(TINY, folder)
    calls = []
    real_write = io.atomic_write_text
    real_fdopen = os.fdopen

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(path, text):
        calls.append(path)
        if len(calls) == fails_at:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            no_space()
        return real_write(path, text)

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if fails_at == 0:
            f.write = no_space
        return f

    monkeypatch.setattr(io, "atomic_write_text", write)
    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(UserError, match=r"Cannot write to the run directory .*No space left"):
        claim_run_dir(folder, None, cfg)
    assert [p.name for p in folder.rglob("*")] == [], list(folder.rglob("*"))
    monkeypatch.undo()
    claim_run_dir(folder, None, cfg)


def test_a_run_stopped_at_step_1_with_nothing_saved_releases_its_directory(tmp_path):
    """A NaN loss at step 1 stops the run before any checkpoint: the claim and everything the
    run wrote (metrics too) go, so the same hydra.run.dir can be used again."""
    from llm_scratch.errors import NonFiniteLossError

    folder = tmp_path / "run"
    (folder).mkdir()
    (folder / "train.log").write_text("the log of this start\n")
    poison = [
        "+callbacks.poison._target_=tests.reliability_helpers.PoisonLoss",
        "+callbacks.poison.at_step=1",
        "callbacks.finite_loss.check_every_n_steps=1",
    ]
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        train(compose_config([*TINY, *poison], folder))
    assert sorted(p.name for p in folder.rglob("*")) == ["train.log"]  # the log stays
    train(compose_config([*TINY, "trainer.max_steps=1"], folder))
    assert (folder / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_a_run_directory_with_a_newline_in_its_name(tmp_path):
    """No Lightning warning that previous log files will be deleted, and the printed commands
    stay on one line and name the directory exactly."""
    from llm_scratch.train.commands import continue_command, override

    run = tmp_path / "two\nlines"
    out = run_cli(SCRIPT, *TINY, "trainer.max_steps=2", override("hydra.run.dir", run))
    assert out.returncode == 0, out.stderr[-3000:]
    console = out.stdout + out.stderr
    assert "will be deleted" not in console and "exists and is not empty" not in console
    assert f"  continue: {continue_command(run)} trainer.max_steps=4" in console
    assert (run / "checkpoints" / "last.ckpt").is_file()
