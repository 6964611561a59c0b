"""Resuming and the run's record: a run really killed mid-epoch (SIGTERM or SIGKILL) and
continued from its last checkpoint logs the same per-step losses as a run that was never
interrupted; the epoch loss after a resume covers the whole epoch; a fine-tuned run continues
without its GPT-2 checkpoint; a run that would never validate says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from llm_scratch.checkpoint import load_model
from llm_scratch.errors import Preempted
from llm_scratch.model import GPT, GPTConfig
from llm_scratch.train import checkpointing
from llm_scratch.train.job import train
from llm_scratch.train.module import GPTLightningModule
from tests.helpers import FAST, REPO, by_step, compose_config

# gpt-nano (dropout 0.1), char-level Verdict: 23 batches per epoch, 2 epochs = 46 steps,
# last.ckpt every 5 steps. Killed in the second epoch, so the resumed run also has to continue
# that epoch's shuffled order.
RUN = [
    "model=gpt-nano",
    "data.tokenizer=char",
    "data.context_length=32",
    "data.stride=null",
    "data.batch_size=24",
    "trainer.max_epochs=2",
    "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
    "callbacks.periodic_checkpoint.every_n_train_steps=5",
]
KILL_AFTER_STEP = 26
TOLERANCE = 1e-6


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "training/run_experiment.py", *RUN, *extra, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> str:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return err


def losses(run_dir: Path) -> dict[int, float]:
    return by_step(run_dir, "train/loss")


def saved_step(path: Path) -> int | None:
    try:
        return torch.load(path, weights_only=True, mmap=True)["global_step"]
    except Exception:  # not there yet
        return None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, float]:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(start(run))
    result = losses(run)
    assert sorted(result) == list(range(1, 47))
    return result


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_run_resumes_exactly(tmp_path, uninterrupted, sig):
    killed = tmp_path / "killed"
    # slowed down so the signal lands mid-epoch; for SIGTERM the pause is before each batch, so
    # the signal arrives while a batch runs and is handled at its end
    where = "start" if sig == signal.SIGTERM else "end"
    process = start(
        killed,
        "+callbacks.throttle._target_=tests.reliability_helpers.Throttle",
        "+callbacks.throttle.seconds=0.1",
        f"+callbacks.throttle.where={where}",
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while (saved_step(last) or 0) < KILL_AFTER_STEP:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)

    step = saved_step(last)
    if sig == signal.SIGTERM:
        # a checkpoint of the batch it stopped at, one line, exit 143 (128 + SIGTERM)
        assert process.returncode == 143, err[-3000:]
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert len(lines) == 1 and "SIGTERM" in lines[0] and f"ckpt_path={killed}" in lines[0]
        assert f"saved checkpoints/last.ckpt at step {step}" in lines[0], lines[0]
        assert "Traceback" not in err
    else:
        assert process.returncode == -signal.SIGKILL
    assert step is not None and KILL_AFTER_STEP <= step < 45, step
    assert step % 23, "the checkpoint must be mid-epoch"
    # the checkpoint counts the tokens of every batch it holds, its last one included
    states = torch.load(last, weights_only=True, mmap=True)["callbacks"]
    seen = next(v["tokens_seen"] for k, v in states.items() if k.startswith("ThroughputLogger"))
    assert seen == step * 24 * 32, (seen, step)

    resumed = tmp_path / "resumed"
    finish(start(resumed, f"ckpt_path={killed}"))
    after = losses(resumed)
    assert sorted(after) == list(range(step + 1, 47))
    diff = max(abs(after[s] - uninterrupted[s]) for s in after)
    print(f"{sig.name}: resumed at step {step}, max abs loss difference {diff:.3g}")
    assert diff <= TOLERANCE, diff


@pytest.mark.slow
def test_sigterm_in_a_validations_end_hooks_saves_there_and_resumes_exactly(
    tmp_path, uninterrupted
):
    """last.ckpt is not written at validations: a SIGTERM that comes in a validation's end hooks
    (at the end of the first epoch, step 23) saves that state, not the periodic one of step 20."""
    killed = tmp_path / "killed"
    stop = [
        "+callbacks.stop._target_=tests.reliability_helpers.FakeSigterm",
        "+callbacks.stop.at_step=23",
        "+callbacks.stop.where=validation_end",
    ]
    process = start(killed, *stop)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-3000:]
    assert saved_step(killed / "checkpoints" / "last.ckpt") == 23
    resumed = tmp_path / "resumed"
    finish(start(resumed, f"ckpt_path={killed}"))
    after = losses(resumed)
    assert sorted(after) == list(range(24, 47))
    assert max(abs(after[s] - uninterrupted[s]) for s in after) <= TOLERANCE


# validation every 10 batches: at steps 10 and 20, where last.ckpt is due too (every 5 steps)
EVERY_10 = ["trainer.val_check_interval=10"]
KILL = "+callbacks.kill._target_=tests.reliability_helpers.KillAt"


@pytest.mark.slow
def test_a_run_killed_during_a_validation_repeats_it(tmp_path):
    """last.ckpt of a step with a validation is saved after it. Killed (SIGKILL) during the
    validation of step 20, the run continues from step 15 and logs that validation again; saved
    before it, as ModelCheckpoint does, Lightning skipped it when continuing."""
    whole = tmp_path / "uninterrupted"
    finish(start(whole, *EVERY_10))
    killed = tmp_path / "killed"
    process = start(killed, *EVERY_10, KILL, "+callbacks.kill.at_step=20")
    _, err = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    assert saved_step(killed / "checkpoints" / "last.ckpt") == 15
    resumed = tmp_path / "resumed"
    finish(start(resumed, *EVERY_10, f"ckpt_path={killed}", "~callbacks.kill"))
    val, val_whole = by_step(resumed, "val/loss"), by_step(whole, "val/loss")
    assert 20 in val and set(val) == {s for s in val_whole if s > 15}
    assert max(abs(val[s] - val_whole[s]) for s in val) <= TOLERANCE
    after, before = losses(resumed), losses(whole)
    assert sorted(after) == list(range(16, 47))
    assert max(abs(after[s] - before[s]) for s in after) <= TOLERANCE


@pytest.mark.slow
def test_a_run_killed_after_its_last_step_is_finished_by_continuing_it(tmp_path):
    """Killed after its last step's checkpoint but before its summary, a run continued with its
    own length finishes: its summary, and the last validation where the record lacks it."""
    length = ["trainer.max_steps=20", *EVERY_10]
    killed = tmp_path / "killed"
    process = start(killed, *length, KILL, "+callbacks.kill.where=train_end")
    _, err = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    assert saved_step(killed / "checkpoints" / "last.ckpt") == 20
    assert not (killed / "summary.json").exists()
    final = by_step(killed, "val/loss")[20]

    finished = tmp_path / "finished"
    finish(start(finished, f"ckpt_path={killed}", "~callbacks.kill"))  # its own length: 20 steps
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["global_step"] == 20
    assert summary["metrics"]["val/loss"] == pytest.approx(final, abs=1e-7)
    assert summary["metrics"]["train/loss"] == pytest.approx(losses(killed)[20], abs=1e-7)
    # logged before the kill: not repeated (nothing logged, so no metrics.csv at all)
    assert not (finished / "metrics.csv").exists()

    # the record without that validation and the epoch's loss (the kill came in the last
    # validation, or the logger's rows were lost with the process): that step is validated
    # again, and the epoch's loss comes from the sums the checkpoint holds
    epoch_loss = by_step(killed, "train/epoch_loss")[20]
    path = killed / "metrics.csv"
    rows = path.read_text().splitlines(keepends=True)
    header = rows[0].rstrip().split(",")
    val, epoch = header.index("val/loss"), header.index("train/epoch_loss")
    kept = [
        r for r in rows[1:] if not (r.split(",")[val] and ",20," in r) and not r.split(",")[epoch]
    ]
    path.write_text("".join([rows[0], *kept]))
    assert sorted(by_step(killed, "val/loss")) == [10] and by_step(killed, "train/epoch_loss") == {}
    again = tmp_path / "again"
    finish(start(again, f"ckpt_path={killed}", "~callbacks.kill"))
    assert by_step(again, "val/loss") == pytest.approx({20: final}, abs=1e-6)
    summary = json.loads((again / "summary.json").read_text())
    assert summary["metrics"]["val/loss"] == pytest.approx(final, abs=1e-6)
    assert summary["metrics"]["train/epoch_loss"] == pytest.approx(epoch_loss, rel=1e-6)
    assert summary["metrics"]["train/loss"] == pytest.approx(losses(killed)[20], abs=1e-7)


# gpt-nano (dropout 0.1), char-level Verdict, 8 batches per epoch, constant learning rate: only
# the batches trained and the dropout masks decide the losses.
SHORT = [
    *FAST,
    "data.tokenizer=char",
    "data.context_length=32",
    "data.stride=null",
    "data.batch_size=64",
    "scheduler.name=constant",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "callbacks.text_sampler=null",
]


@pytest.mark.parametrize(
    "sampling,background",
    [
        ("sliding", False),
        pytest.param("random", False, marks=pytest.mark.slow),
        # every checkpoint written by the background thread, as a large model's are
        ("sliding", True),
    ],
    ids=["sliding", "random", "sliding-background-writes"],
)
def test_raising_max_steps_continues_where_the_run_stopped(
    tmp_path, monkeypatch, sampling, background
):
    # The README's way to train longer: raise trainer.max_steps and continue with ckpt_path.
    # Stopped mid-epoch (step 3), the continuation started the next epoch at batch 5/8, and
    # epoch 0's last batches were never trained; stopped at an epoch's end (step 8, Lightning
    # issue #19617), the steps were one off and an epoch's windows were skipped. Each stop here
    # continues the previous continuation: 3, 8 (end of epoch 0), 11, then 12.
    common = [*SHORT, f"data.sampling={sampling}"]
    writers = set()
    if background:
        monkeypatch.setattr(checkpointing, "BACKGROUND_BYTES", 0)
        save = torch.save

        def recorded(*args, **kwargs):
            writers.add(threading.current_thread().name.split("_")[0])
            return save(*args, **kwargs)

        monkeypatch.setattr(torch, "save", recorded)

    def run(name: str, max_steps: int, ckpt: Path | None = None) -> dict[int, float]:
        extra = [f"ckpt_path={ckpt}"] if ckpt else []
        train(compose_config([*common, f"trainer.max_steps={max_steps}", *extra], tmp_path / name))
        return losses(tmp_path / name)

    whole = run("whole", 12)
    continued, previous = {}, None
    for max_steps in (3, 8, 11, 12):
        continued.update(run(f"to{max_steps}", max_steps, previous))
        previous = tmp_path / f"to{max_steps}"
    assert sorted(continued) == sorted(whole) == list(range(1, 13))
    assert max(abs(continued[s] - whole[s]) for s in whole) == 0
    assert writers == ({"checkpoint"} if background else set())


# ============================== the run's record: epoch losses, fine-tuned runs, no validation
# gpt-nano, char-level Verdict: 23 batches of 24 windows of 32 characters per epoch.
TINY = [
    *FAST,
    "data.tokenizer=char",
    "data.context_length=32",
    "data.stride=null",
    "data.batch_size=24",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=1",
    "callbacks.text_sampler.max_new_tokens=2",
    "scheduler.total_steps=23",  # the same schedule when a run stops early at max_steps
]
STOP_AT = 9  # mid-epoch


def epoch_losses(run: Path) -> dict[int, float]:
    return by_step(run, "train/epoch_loss")


@pytest.fixture(scope="module")
def uninterrupted_epoch_losses(tmp_path_factory) -> dict[int, float]:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(compose_config(TINY, run))
    return epoch_losses(run)


def test_epoch_loss_after_a_mid_epoch_resume_covers_the_whole_epoch(
    tmp_path, uninterrupted_epoch_losses
):
    killed = tmp_path / "killed"
    stop = [
        "+callbacks.stop._target_=tests.reliability_helpers.FakeSigterm",
        f"+callbacks.stop.at_step={STOP_AT}",
    ]
    with pytest.raises(Preempted):
        train(compose_config([*TINY, *stop], killed))
    resumed = tmp_path / "resumed"
    train(compose_config([*TINY, f"ckpt_path={killed}"], resumed))
    assert epoch_losses(resumed) == pytest.approx(uninterrupted_epoch_losses, rel=1e-6)

    # a checkpoint from before the sums were saved still resumes, and still loads for sampling
    old = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    sums = [k for k in old["state_dict"] if k.startswith("train_epoch_loss.")]
    assert sums, "the epoch sums are in the checkpoint"
    for key in [k for k in old["state_dict"] if not k.startswith("model.")]:
        del old["state_dict"][key]
    torch.save(old, tmp_path / "old.ckpt")
    load_model(tmp_path / "old.ckpt")
    train(compose_config([*TINY, f"ckpt_path={tmp_path / 'old.ckpt'}"], tmp_path / "from_old"))
    assert epoch_losses(tmp_path / "from_old")


def test_epoch_loss_after_max_steps_stopped_mid_epoch(tmp_path, uninterrupted_epoch_losses):
    first = tmp_path / "first"
    train(compose_config([*TINY, f"trainer.max_steps={STOP_AT}"], first))
    continued = tmp_path / "continued"
    train(compose_config([*TINY, "trainer.max_steps=-1", f"ckpt_path={first}"], continued))
    assert epoch_losses(continued) == pytest.approx(uninterrupted_epoch_losses, rel=1e-6)


# ----------------------------------------------------------------------------- fine-tuning
FINETUNE = [
    *FAST,
    "data=shakespeare_bpe",
    "data.context_length=32",
    "data.batch_size=2",
    "data.sampling=random",
    "data.samples_per_epoch=6",
    "trainer.max_epochs=-1",
    "trainer.limit_val_batches=1",
    "model.dropout=0.0",
    "callbacks.text_sampler.max_new_tokens=2",
    "scheduler.total_steps=6",
]


@pytest.mark.parametrize("give_init_from", [True, False], ids=["init_from-gone", "no-init_from"])
def test_a_fine_tuned_run_continues_without_its_gpt2_checkpoint(tmp_path, give_init_from):
    pytest.importorskip("transformers")
    gpt2_dir = tmp_path / "tiny_gpt2"
    config = GPTConfig(vocab_size=50257, context_length=64, n_layer=1, n_head=2, n_embd=16)
    GPT(config).save_hf(gpt2_dir)
    run = tmp_path / "run"
    train(compose_config([*FINETUNE, f"init_from={gpt2_dir}", "trainer.max_steps=3"], run))
    shutil.rmtree(gpt2_dir)

    continued = tmp_path / "continued"
    init_from = [f"init_from={gpt2_dir}"] if give_init_from else []
    train(
        compose_config(
            [*FINETUNE, *init_from, "trainer.max_steps=5", f"ckpt_path={run}"], continued
        )
    )
    ckpt = torch.load(continued / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5
    assert ckpt["hyper_parameters"]["init_from"] == str(gpt2_dir)  # still on record
    assert ckpt["hyper_parameters"]["model"]["n_embd"] == 16  # the fine-tuned architecture


def test_load_from_checkpoint_of_a_fine_tuned_run_gives_the_trained_weights(tmp_path):
    pytest.importorskip("transformers")
    gpt2_dir = tmp_path / "tiny_gpt2"
    config = GPTConfig(vocab_size=50257, context_length=64, n_layer=1, n_head=2, n_embd=16)
    GPT(config).save_hf(gpt2_dir)
    pretrained = GPT.from_hf(gpt2_dir).state_dict()
    run = tmp_path / "run"
    train(compose_config([*FINETUNE, f"init_from={gpt2_dir}", "trainer.max_steps=3"], run))
    shutil.rmtree(gpt2_dir)  # reloading must not need it

    path = run / "checkpoints" / "last.ckpt"
    module = GPTLightningModule.load_from_checkpoint(path, weights_only=True)
    trained = torch.load(path, weights_only=True)["state_dict"]
    loaded = module.model.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, trained[f"model.{key}"]), key
    # and the trained weights are not the GPT-2 ones they started from
    assert not torch.equal(
        loaded["transformer.h.0.mlp.c_fc.weight"], pretrained["transformer.h.0.mlp.c_fc.weight"]
    )


# ----------------------------------------------------------------------------- no validation
@pytest.mark.parametrize(
    "overrides,warns",
    [
        (["trainer.max_steps=2"], True),  # the first validation is at the epoch's end (step 23)
        (["trainer.max_steps=2", "trainer.val_check_interval=2"], False),
        (["trainer.max_steps=2", "trainer.limit_val_batches=0"], False),  # asked for none
    ],
    ids=["warns", "validates-in-time", "validation-off"],
)
def test_max_steps_before_the_first_validation_warns(tmp_path, caplog, overrides, warns):
    caplog.set_level(logging.WARNING, logger="llm_scratch.train.job")
    train(compose_config([*TINY, *overrides], tmp_path))
    warned = [r for r in caplog.records if "before its first validation" in r.getMessage()]
    assert len(warned) == int(warns), caplog.text
