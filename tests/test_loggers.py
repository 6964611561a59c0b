"""Loggers: W&B never waits on a login prompt; TensorBoard and CSV side by side; one step count
in every output."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from llm_scratch.train.job import train
from tests.helpers import CHAR_VERDICT, FAST, by_step, compose_config, read_metrics, run_cli

ONE_EPOCH = [*FAST, "trainer.max_epochs=1", "callbacks.text_sampler.max_new_tokens=3"]


@pytest.mark.slow
def test_wandb_without_an_api_key_logs_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc credentials
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    monkeypatch.setenv("LLM_SCRATCH_SWEEP_ID", "ablation-2026")
    run = tmp_path / "run"
    cfg = compose_config([*ONE_EPOCH, "logger=wandb"], run)
    assert cfg.logger.wandb.group == "ablation-2026"  # sweep jobs are grouped by sweep
    metrics = train(cfg)
    assert metrics["val/loss"] > 0
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb"))
    assert "WANDB_MODE" not in os.environ  # nothing leaks into later runs in this process


def test_tensorboard_and_csv_together(tmp_path):
    run = tmp_path / "run"
    cfg = compose_config([*ONE_EPOCH, "logger=[csv,tensorboard]"], run)
    train(cfg)
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "val/ppl"} <= set(header)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_a_validation_carries_one_step_number_in_every_output(tmp_path):
    """The console, metrics.csv, TensorBoard, samples.jsonl and the best checkpoint's name all
    count optimizer steps done: the validation after the 5th step is step 5 everywhere."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    out = run_cli(
        "training/run_experiment.py",
        *CHAR_VERDICT,
        "trainer.max_steps=10",
        "callbacks.text_sampler.max_new_tokens=3",
        "trainer.val_check_interval=5",
        "logger=[csv,tensorboard]",
        f"hydra.run.dir={run}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    console = out.stdout + out.stderr
    assert re.findall(r"validation at step (\d+)", console) == ["5", "10"], console[-3000:]
    rows = read_metrics(run)
    assert [int(r["step"]) for r in rows if r["val/loss"]] == [5, 10]
    assert [int(r["step"]) for r in rows if r["train/loss"]] == list(range(1, 11))
    assert {r["epoch"] for r in rows} == {"0"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 10 and not {"step", "epoch"} & set(summary["metrics"])
    events = EventAccumulator(str(next((run / "tensorboard").rglob("events.out.tfevents.*"))))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [5, 10]
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 11))
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [5, 10]
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    step, val = re.fullmatch(r"best-step(\d+)-val([\d.]+)\.ckpt", best.name).groups()
    assert int(step) == torch.load(best, weights_only=True, map_location="cpu")["global_step"]
    assert f"{by_step(run, 'val/loss')[int(step)]:.4f}" == val


def test_samples_every_nth_validation_and_the_last_counted_across_a_continued_run(tmp_path):
    """every_n_validations=3: of the validations at steps 2, 4, ..., 14, samples at the 3rd and
    6th (steps 6, 12) and at the last of each run (8, 14); the count goes on in a continuation."""
    every = [
        *CHAR_VERDICT,
        "trainer.val_check_interval=2",
        "callbacks.text_sampler.max_new_tokens=2",
        "callbacks.text_sampler.every_n_validations=3",
    ]

    def sampled_steps(run):
        lines = (run / "samples.jsonl").read_text().splitlines()
        return [json.loads(line)["step"] for line in lines]

    first, continued = tmp_path / "first", tmp_path / "continued"
    train(compose_config([*every, "trainer.max_steps=8"], first))
    assert sampled_steps(first) == [6, 8]
    train(compose_config([f"ckpt_path={first}", "trainer.max_steps=14"], continued))
    assert sampled_steps(continued) == [12, 14]
