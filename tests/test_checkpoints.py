"""What a run keeps on disk: one full checkpoint (last.ckpt, with the optimizer state that exact
resume needs) and the best model's weights only; no two byte-identical files. Sampling and
fine-tuning read the weights-only best; resuming from it is refused in one line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from llm_scratch.checkpoint import (
    check_resume_checkpoint,
    load_init_weights,
    load_model,
    read_checkpoint,
    resolve_checkpoint,
)
from llm_scratch.errors import UserError
from llm_scratch.train.job import train
from tests.helpers import CHAR_VERDICT, compose_config, run_cli

# 8 steps, validating every 4: the best is the step-8 model, so with full checkpoints best and
# last would be the same bytes (the case the issue measured).
RUN = [*CHAR_VERDICT, "trainer.max_steps=8", "trainer.val_check_interval=4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpts") / "run"
    train(compose_config(RUN, folder))
    return folder


def _files(run: Path) -> dict[str, Path]:
    return {p.name: p for p in (run / "checkpoints").iterdir() if p.is_file()}


def test_one_full_checkpoint_and_a_weights_only_best(run):
    files = _files(run)
    best = [name for name in files if name.startswith("best-")]
    assert sorted(files) == sorted(["last.ckpt", *best]) and len(best) == 1, files
    last = read_checkpoint(files["last.ckpt"])
    weights = read_checkpoint(files[best[0]])
    assert last["global_step"] == 8 and weights["global_step"] == 8
    # last: everything exact resume needs; best: the model and what sampling reads
    assert {"optimizer_states", "lr_schedulers", "loops", "callbacks"} <= set(last)
    assert "optimizer_states" not in weights and "lr_schedulers" not in weights
    assert weights["hyper_parameters"] == last["hyper_parameters"]
    for key, value in last["state_dict"].items():
        assert torch.equal(weights["state_dict"][key], value), key
    # AdamW keeps two moments per parameter: the best is about a third of the full checkpoint
    ratio = files[best[0]].stat().st_size / files["last.ckpt"].stat().st_size
    assert 0.2 < ratio < 0.5, ratio


def test_no_two_checkpoint_files_are_byte_identical(run):
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in _files(run).values()]
    assert len(set(digests)) == len(digests)


def test_sampling_and_init_from_read_the_weights_only_best(run):
    path = resolve_checkpoint(str(run), "sample")
    assert path.name.startswith("best-")
    model, tokenizer, _ = load_model(path)
    fresh, _, _ = load_model(run / "checkpoints" / "last.ckpt")
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    target, _, _ = load_model(run / "checkpoints" / "last.ckpt")
    torch.nn.init.zeros_(target.lm_head.weight)
    load_init_weights(target, str(run), read_checkpoint(path)["hyper_parameters"]["tokenizer"])
    assert torch.equal(target.lm_head.weight, model.lm_head.weight)
    assert tokenizer.decode(tokenizer.encode("the")) == "the"


def test_resume_from_the_weights_only_best_is_refused_in_one_line(run):
    best = next(p for n, p in _files(run).items() if n.startswith("best-"))
    hparams = read_checkpoint(best)["hyper_parameters"]
    with pytest.raises(UserError, match="weights only.*last.ckpt.*init_from="):
        check_resume_checkpoint(best, hparams["model"], hparams["tokenizer"])
    # the run directory means its full last.ckpt, which is accepted
    last = resolve_checkpoint(str(run), "resume")
    assert last.name == "last.ckpt"
    assert "optimizer_states" in check_resume_checkpoint(
        last, hparams["model"], hparams["tokenizer"]
    )


@pytest.mark.slow
def test_the_cli_refuses_to_resume_from_the_best_and_continues_from_the_run(run, tmp_path):
    best = next(p for n, p in _files(run).items() if n.startswith("best-"))
    refused = run_cli(
        "training/run_experiment.py",
        *RUN,
        "trainer.max_steps=12",
        f"ckpt_path={best}",
        f"hydra.run.dir={tmp_path / 'refused'}",
    )
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "init_from=" in lines[0]
    assert "Traceback" not in refused.stderr
