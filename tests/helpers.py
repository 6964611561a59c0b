"""Shared test helpers: the config composed the way the entry point composes it, and the entry
points run as a user runs them."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from llm_scratch.train.compose import CONFIG_DIR as _CONFIG_DIR
from llm_scratch.train.compose import compose_config
from llm_scratch.train.config_store import register_configs

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(_CONFIG_DIR)

__all__ = [
    "CHAR_VERDICT",
    "CONFIG_DIR",
    "FAST",
    "REPO",
    "by_step",
    "char_checkpoint",
    "column",
    "compose_config",
    "option_names",
    "read_metrics",
    "run_cli",
]

# Small and quick: a 3-layer, 48-wide model, few steps, no sanity validation.
FAST = [
    "model=gpt-nano",
    "trainer.accelerator=cpu",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]
# gpt-nano on character-level Verdict: 23 batches of 24 windows of 32 characters per epoch.
CHAR_VERDICT = [
    *FAST,
    "data.tokenizer=char",
    "data.context_length=32",
    "data.stride=null",
    "data.batch_size=24",
    "trainer.limit_val_batches=2",
]


def run_cli(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a script of the repository (e.g. training/run_experiment.py) in a fresh process."""
    environ = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def option_names(group: str) -> list[str]:
    """The options of a config group as Hydra lists them: configs/<group>/*.yaml and those
    registered in the ConfigStore, less the building blocks (``base``, ``*_schema``)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        options = GlobalHydra.instance().config_loader().get_group_options(group)
    return sorted(o for o in options if o != "base" and not o.endswith("_schema"))


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv."""
    with (Path(run_dir) / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    """``key``'s values in the rows that have one, in order."""
    return [float(r[key]) for r in rows if r.get(key)]


def by_step(run_dir: Path, key: str) -> dict[int, float]:
    """``key``'s values in a run's metrics.csv, by step."""
    return {int(r["step"]): float(r[key]) for r in read_metrics(run_dir) if r.get(key)}


def char_checkpoint(path: Path, text: str = "hello world\n", context_length: int = 16) -> Path:
    """A checkpoint like training writes, without training: the model, its config, tokenizer."""
    import torch

    from llm_scratch.data.tokenizers import CharTokenizer
    from llm_scratch.model import GPTConfig
    from llm_scratch.train.module import GPTLightningModule

    tokenizer = CharTokenizer.from_text(text)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        context_length=context_length,
        n_layer=1,
        n_head=2,
        n_embd=8,
    )
    module = GPTLightningModule.from_config(config, tokenizer=tokenizer.to_dict())
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save(checkpoint, path)
    return path
