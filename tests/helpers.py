"""Shared test helpers: the config composed the way the entry point composes it."""

from __future__ import annotations

from pathlib import Path

from llm_scratch.train.compose import CONFIG_DIR as _CONFIG_DIR
from llm_scratch.train.compose import compose_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(_CONFIG_DIR)

__all__ = ["CONFIG_DIR", "FAST", "REPO", "compose_config"]

# Small and quick: a 3-layer, 48-wide model, few steps, no sanity validation.
FAST = [
    "model=gpt-nano",
    "trainer.accelerator=cpu",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]
