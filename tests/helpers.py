"""Shared test helpers: compose the Hydra config the way the entry point does."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs")

# Small and quick: a 3-layer, 48-wide model, few steps, no sanity validation.
FAST = [
    "model=gpt-nano",
    "trainer.accelerator=cpu",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]


def compose_config(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The composed ``train`` config with ``overrides``, writing into ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
            cfg.paths.log_dir = str(run_dir.parent)
    return cfg
