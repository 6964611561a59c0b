"""Compose the training config in-process, as ``training/run_experiment.py`` gets it.

The entry point composes ``configs/train.yaml`` through ``@hydra.main``, which also creates the
run directory. Code that trains inside an existing process (the benchmarks, the tests) composes
the same config here instead, and names the run directory itself.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from llm_scratch.train.config_store import register_configs

# configs/ sits next to the package in the repository (the README's editable install); the
# entry point and the tests compose from here.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose_config(overrides: list[str], output_dir: str | Path | None = None) -> DictConfig:
    """The composed ``train`` config with ``overrides`` (later ones win).

    With ``output_dir`` the run writes there and ``paths.log_dir`` is its parent (where
    ``ckpt_path=last`` looks); without it ``paths.output_dir`` is left to Hydra's interpolation.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_configs()
    GlobalHydra.instance().clear()  # a previous composition in this process would refuse ours
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    # ${hydra:...} interpolations (paths.output_dir, the log file) resolve against this config
    HydraConfig.instance().set_config(cfg)
    if output_dir is not None:
        output_dir = Path(output_dir)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir.parent)
    return cfg
