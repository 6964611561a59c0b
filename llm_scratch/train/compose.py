"""Compose the training config in-process, as ``training/run_experiment.py`` gets it.

The entry point composes ``configs/train.yaml`` through ``@hydra.main``, which also creates the
run directory. Code that trains inside an existing process (the benchmarks, the tests) composes
the same config here instead, and names the run directory itself.

A continued run (``ckpt_path=<run dir or checkpoint>``) starts from the config of the run it
continues: :func:`with_saved_overrides` puts that run's ``.hydra/overrides.yaml`` before the
overrides given now (later ones win), both here and in the entry point (before Hydra composes).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
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
    overrides = with_saved_overrides(overrides)
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


# what a continuation decides anew rather than takes from the run it continues
_NOT_INHERITED = ("ckpt_path", "continue_with_changes", "print_config")


def _key(override: str) -> str | None:
    """The config key or group an override sets (``+a.b=1``: ``a.b``); None if unparsable."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(override).key_or_group
    except HydraException:
        return None


def saved_run_dir(checkpoint: Path) -> Path | None:
    """The run directory that wrote ``checkpoint`` (``<run>/checkpoints/<file>``), if it holds
    the run's recorded overrides (``.hydra/overrides.yaml``); None for a loose checkpoint."""
    run = checkpoint.resolve().parent.parent
    if checkpoint.resolve().parent.name != "checkpoints":
        return None
    return run if (run / ".hydra" / "overrides.yaml").is_file() else None


def continued_run(overrides: list[str]) -> Path | None:
    """The run directory that ``ckpt_path=`` among ``overrides`` continues; None when there is
    none, or the checkpoint does not exist (training then says so in one line)."""
    from llm_scratch.checkpoint import resolve_checkpoint
    from llm_scratch.errors import UserError

    given = {_key(o): o for o in overrides}
    spec = given.get("ckpt_path")
    if spec is None:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    value = OverridesParser.create().parse_override(spec).value()
    if not isinstance(value, str):
        return None
    log_dir = os.environ.get("LLM_SCRATCH_LOG_DIR", "outputs")
    if "paths.log_dir" in given:
        log_dir = str(OverridesParser.create().parse_override(given["paths.log_dir"]).value())
    try:
        return saved_run_dir(resolve_checkpoint(value, "resume", log_dir))
    except (UserError, OSError):
        return None


def with_saved_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` with, before them, the recorded overrides of the run that ``ckpt_path=``
    continues: its config is the base, and what is given now applies on top. Hydra's own
    settings (``hydra.*``: its run directory ...) and the continuation's own keys are not
    inherited, nor a key given again now."""
    run = continued_run(overrides)
    if run is None:
        return list(overrides)
    try:
        saved = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return list(overrides)
    if not isinstance(saved, list):
        return list(overrides)
    given = {_key(o): o for o in overrides}
    # a group chosen now (trainer=ddp) replaces the run's: its values set then are not inherited
    chosen = {key for key in given if key and "." not in key}
    inherited = []
    for override in map(str, saved):
        key = _key(override)
        if key is None or key.split(".")[0].split("/")[0] in ("hydra", *_NOT_INHERITED):
            continue
        if key.split(".")[0] in chosen and "." in key:
            continue
        if key in given:
            # kept only where it adds the key (+key=) that the one given now changes (key=)
            adds = override.startswith("+") and not override.startswith("++")
            if not adds or given[key].startswith(("+", "~")):
                continue
        inherited.append(override)
    return [*inherited, *overrides]


def expand_argv(argv: list[str]) -> list[str]:
    """The entry point's command line with :func:`with_saved_overrides` applied (a single run
    only: a sweep (``-m``) continues its jobs itself)."""
    if any(a in ("-m", "--multirun") for a in argv[1:]):
        return argv
    # (a deletion, ~key, may have no "=": it too applies after the run's own overrides)
    overrides = [a for a in argv[1:] if ("=" in a or a.startswith("~")) and not a.startswith("-")]
    if not overrides:
        return argv
    flags = [a for a in argv[1:] if a not in overrides]
    return [argv[0], *flags, *with_saved_overrides(overrides)]


# What a continuation may not change unless told (continue_with_changes=true): the keys that
# change what is trained, by the first matching prefix, with the words that name them. The
# length of training (trainer.max_steps, max_epochs) and everything else (validation, logging,
# devices, where data is read from) may change; the start-up line lists it.
_TRAINED = (
    ("data.num_workers", None),
    ("data.pin_memory", None),
    ("data.data_dir", None),
    ("data.cache_dir", None),
    ("data.tokenizer", "another tokenizer"),
    ("data.", "other data"),
    ("model.", "another model configuration"),
    ("optimizer.", "another optimizer"),
    ("scheduler.", "another schedule"),
    ("seed", "another seed"),
    ("init_from", "other initial weights"),
    ("trainer.precision", "another precision"),
    ("trainer.accumulate_grad_batches", "another optimizer step"),
    ("trainer.gradient_clip_val", "another optimizer step"),
    ("trainer.gradient_clip_algorithm", "another optimizer step"),
)
# never compared: where this run writes, and the continuation's own keys
_NOT_COMPARED = ("paths", "hydra", *_NOT_INHERITED)


def trained_by(key: str) -> str | None:
    """What changing ``key`` changes in what is trained (e.g. "another optimizer"); None for a
    key that a continuation may change."""
    for prefix, what in _TRAINED:
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            return what
    return None


def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        if not node and prefix:
            return {prefix: {}}
        out: dict[str, object] = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def config_changes(saved: dict, now: dict) -> dict[str, tuple[object, object]]:
    """The leaves that differ between two job configs (unresolved, as ``.hydra/config.yaml``
    holds them), ``{key: (there, here)}``; a missing leaf is ``None``."""
    before = {k: v for k, v in _leaves(saved).items() if k.split(".")[0] not in _NOT_COMPARED}
    after = {k: v for k, v in _leaves(now).items() if k.split(".")[0] not in _NOT_COMPARED}
    return {
        k: (before.get(k), after.get(k))
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    }


def hparams_changes(hparams: dict, optimizer: dict, scheduler: dict) -> dict:
    """What differs between a checkpoint's recorded optimizer and schedule and this run's (for
    a checkpoint outside a run directory, which has no saved config)."""
    saved = {
        "optimizer": hparams.get("optimizer") or {},
        "scheduler": hparams.get("scheduler") or {},
    }
    if not saved["optimizer"] and not saved["scheduler"]:
        return {}
    now = {"optimizer": optimizer, "scheduler": scheduler}
    if not saved["scheduler"]:
        now.pop("scheduler")
        saved.pop("scheduler")
    return config_changes(saved, now)


def list_changes(changes: dict[str, tuple[object, object]]) -> str:
    """``key: there -> here, ...`` for the start-up line."""
    return ", ".join(f"{k}: {there!r} -> {here!r}" for k, (there, here) in changes.items())


def describe_changes(changes: dict[str, tuple[object, object]]) -> str:
    return ", ".join(
        f"{k}={there!r} there but {here!r} here" for k, (there, here) in changes.items()
    )


# what makes the global batch, the batch an optimizer step is over
_GLOBAL_BATCH = (
    "data.batch_size",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accumulate_grad_batches",
)


def global_batch(config: dict) -> int | None:
    """The windows an optimizer step is over (``data.batch_size`` x devices x nodes x
    accumulated batches), or None where one of them is not a plain number."""
    leaves = _leaves(config)
    defaults = {"trainer.num_nodes": 1, "trainer.accumulate_grad_batches": 1}
    total = 1
    for key in _GLOBAL_BATCH:
        value = leaves.get(key, defaults.get(key))
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        total *= value
    return total


def check_continuation(
    changes: dict[str, tuple[object, object]],
    continued: str,
    allowed: bool,
    same_global_batch: bool = False,
) -> None:
    """Refuse (one line naming them) the ``changes`` from the run continued that change what is
    trained, unless ``allowed`` (continue_with_changes=true). ``same_global_batch``: the batch
    split otherwise over processes (batch_size 16 on one, 8 on each of two), not a change."""
    from llm_scratch.errors import UserError

    refused: dict[str, dict] = {}
    for key, change in changes.items():
        if same_global_batch and key in _GLOBAL_BATCH:
            continue
        what = trained_by(key)
        if what is not None:
            refused.setdefault(what, {})[key] = change
    if not refused or allowed:
        return
    shown = "; ".join(f"{what} ({describe_changes(c)})" for what, c in refused.items())
    raise UserError(
        f"ckpt_path={continued} would continue that run with {shown}. A continuation takes the "
        "run's own config: leave these out; or add continue_with_changes=true if the change is "
        "meant (or start a new run from its weights with init_from=<the run>)."
    )
