"""A run's record stays whole across interruptions: the epoch loss after a resume, and the
continuation of a fine-tuned run."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from llm_scratch.checkpoint import load_model
from llm_scratch.errors import Preempted
from llm_scratch.model import GPT, GPTConfig
from llm_scratch.train.job import train
from llm_scratch.train.module import GPTLightningModule
from tests.helpers import FAST, compose_config

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


class FakeSigterm(L.Callback):
    """Acts as if SIGTERM arrived during the batch that reaches ``at_step``: Lightning stops
    after it and SigtermCheckpoint saves last.ckpt."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            trainer._signal_connector.received_sigterm = True  # what the handler sets


def epoch_losses(run: Path) -> dict[int, float]:
    with (run / "metrics.csv").open() as f:
        rows = csv.DictReader(f)
        return {int(r["step"]): float(r["train/epoch_loss"]) for r in rows if r["train/epoch_loss"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, float]:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(compose_config(TINY, run))
    return epoch_losses(run)


def test_epoch_loss_after_a_mid_epoch_resume_covers_the_whole_epoch(tmp_path, uninterrupted):
    killed = tmp_path / "killed"
    stop = [
        "+callbacks.stop._target_=tests.test_run_integrity.FakeSigterm",
        f"+callbacks.stop.at_step={STOP_AT}",
    ]
    with pytest.raises(Preempted):
        train(compose_config([*TINY, *stop], killed))
    resumed = tmp_path / "resumed"
    train(compose_config([*TINY, f"ckpt_path={killed}"], resumed))
    assert epoch_losses(resumed) == pytest.approx(uninterrupted, rel=1e-6)

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


def test_epoch_loss_after_max_steps_stopped_mid_epoch(tmp_path, uninterrupted):
    first = tmp_path / "first"
    train(compose_config([*TINY, f"trainer.max_steps={STOP_AT}"], first))
    continued = tmp_path / "continued"
    train(compose_config([*TINY, f"ckpt_path={first}"], continued))
    assert epoch_losses(continued) == pytest.approx(uninterrupted, rel=1e-6)


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
