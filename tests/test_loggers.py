"""Loggers: W&B never waits on a login prompt; TensorBoard and CSV side by side."""

from __future__ import annotations

import os

import pytest

from llm_scratch.train.job import train
from tests.helpers import FAST, compose_config

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
