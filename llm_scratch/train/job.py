"""The training job behind ``training/run_experiment.py``: config in, trained run directory out.

:func:`train` reads as lightning-hydra-template's: check the config, instantiate the data, the
model, the loggers, callbacks and the Trainer, fit, and write the run's summary. What a run
directory may hold is run_dir.py's; continuing a stopped sweep's job, sweep_resume.py's.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from llm_scratch.checkpoint import (
    check_resume_checkpoint,
    init_from_config,
    read_checkpoint,
    resolve_checkpoint,
)
from llm_scratch.data.corpora import load_corpus
from llm_scratch.errors import UserError, exit_on_user_error, one_line
from llm_scratch.model import GPTConfig
from llm_scratch.sweep_env import SWEEP_ID_ENV
from llm_scratch.train.boundary import configured, running
from llm_scratch.train.callbacks import build_callbacks
from llm_scratch.train.checkpointing import AtomicCheckpointIO, remove_stale_run_temporaries
from llm_scratch.train.commands import (
    continue_command,
    override,
    report_command,
    sample_command,
    shown_path,
)
from llm_scratch.train.compose import (
    check_continuation,
    config_changes,
    global_batch,
    hparams_changes,
    list_changes,
    saved_run_dir,
)
from llm_scratch.train.failures import training_errors
from llm_scratch.train.loggers import (
    build_loggers,
    finish_loggers,
    quiet_known_noise,
    route_lightning_logs,
)
from llm_scratch.train.module import GPTLightningModule
from llm_scratch.train.optim import OptimizerConfig, SchedulerConfig
from llm_scratch.train.run_dir import (
    claim_run_dir,
    is_main_process,
    made_for_this_start,
    remove_unfinished,
)
from llm_scratch.train.summary import write_run_summary
from llm_scratch.train.sweep_resume import (
    continued_sweep_job,
    drop_rows_after_checkpoint,
    last_logged,
    logged_rows,
    row_step,
)
from llm_scratch.train.timing import mark
from llm_scratch.train.validate import validate_config
from llm_scratch.utils.allocator import retain_freed_memory
from llm_scratch.utils.config_tree import print_config_tree
from llm_scratch.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train a GPT as ``cfg`` says; return the final metrics (``train/loss``, ``val/loss`` ...)."""
    started = time.time()
    retain_freed_memory()  # before the first activations: no page faults for them every step
    route_lightning_logs()
    quiet_known_noise()
    # The run directory already holds config.yaml and tokenizer.json when the CSV logger starts;
    # claim_run_dir has made sure it holds no earlier metrics.
    # ((?s): a directory name may hold a newline)
    warnings.filterwarnings(
        "ignore", message="(?s)Experiment logs directory .* exists and is not empty"
    )
    # LMDataModule saves and restores the place in the epoch itself (its state_dict).
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
    output_dir = Path(cfg.paths.output_dir)
    written: list[Path] = []  # the files this call writes into the run directory
    fresh = made_for_this_start(output_dir)  # Hydra made it for this start (or none yet)
    stage: dict[str, bool] = {"training": False}
    try:
        validate_config(cfg)
        given = cfg.get("ckpt_path")
        ckpt_path = (
            None if given is None else str(resolve_checkpoint(given, "resume", cfg.paths.log_dir))
        )
        # the directory is claimed (refused if in use or not empty), then .hydra/ written; a
        # stopped sweep's job continues in its own, and the other processes of a run use the
        # first's
        if (continued := continued_sweep_job(output_dir)) is None and is_main_process():
            written += claim_run_dir(output_dir, ckpt_path, cfg)
        ckpt_path = continued or ckpt_path
        if is_main_process():
            # in full: sample.py and ckpt_path=
            log.info("Run directory: %s", shown_path(output_dir.resolve()))
        return _train(cfg, output_dir, ckpt_path, started, written, stage)
    except BaseException:  # Ctrl-C during the setup too
        if is_main_process():
            remove_unfinished(output_dir, written, stage["training"], fresh)
        raise


def _train(
    cfg: DictConfig,
    output_dir: Path,
    ckpt_path: str | None,
    started: float,
    written: list[Path],
    stage: dict[str, bool],
) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    # Every check a config value can fail comes before anything is written to the run directory.
    mark("data")  # phase times (llm_scratch/train/timing.py): start-up ends here
    with configured("data"):  # anything a group's object raises: one line naming the group
        datamodule = instantiate(cfg.data)
    tokenizer = datamodule.tokenizer
    _check_corpus_exists(datamodule)
    mark("data_built")
    # A continued fine-tuning run takes its weights, and so its architecture, from its own
    # checkpoint: the GPT-2 checkpoint it started from is neither needed nor loaded again.
    checkpoint = read_checkpoint(ckpt_path, mmap=True) if ckpt_path else {}
    saved = checkpoint.get("hyper_parameters", {})
    # a run continued in a new directory (ckpt_path=): where its curve up to here is, for the
    # report (a stopped sweep's job continues in its own directory, its curve in one file)
    resumed = Path(ckpt_path).resolve() if ckpt_path else None
    continued_from = (
        {"checkpoint": str(resumed), "global_step": int(checkpoint["global_step"])}
        if resumed
        and "global_step" in checkpoint
        and not resumed.is_relative_to(output_dir.resolve())
        else None
    )
    init_from = cfg.get("init_from") or saved.get("init_from")
    continues_finetune = bool(init_from and saved.get("model"))
    with configured("model"):
        finetuned = saved["model"] if continues_finetune else None
        model_config = _model_config(cfg, datamodule.vocab_size, finetuned)
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True)
    with configured("optimizer"):
        OptimizerConfig(**optimizer)
    with configured("scheduler"):
        SchedulerConfig(**scheduler)
    if ckpt_path is not None:  # refused here, with one line, rather than deep inside Lightning
        changes = _continuation_changes(cfg, ckpt_path, saved, optimizer, scheduler)
        check_resume_checkpoint(ckpt_path, asdict(model_config), tokenizer.to_dict())
        if continued_from is not None:
            continued_from["changed"] = {k: list(v) for k, v in changes.items()}
    with configured("logger"):
        loggers = build_loggers(cfg)
    drop_rows_after_checkpoint(loggers, output_dir)
    with configured("callbacks"):
        callbacks = build_callbacks(cfg)
    with configured("trainer"):
        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()]
        )

    # the main process alone writes into the run directory: another process (a SLURM task,
    # which has no LOCAL_RANK) writing first would make the main one find it not empty
    if is_main_process():
        job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        if cfg.get("print_config") and not os.environ.get(SWEEP_ID_ENV):
            print_config_tree(job_cfg)  # (a sweep prints it once, for all its jobs)
        elif not os.environ.get(SWEEP_ID_ENV):
            log.info("%s", _short_config(output_dir))
        written.append(output_dir / "config.yaml")
        atomic_write_text(written[-1], OmegaConf.to_yaml(job_cfg, resolve=True))
        written.append(output_dir / "tokenizer.json")
        tokenizer.save(written[-1])
    mark("model")
    with configured("model"):
        module = GPTLightningModule(
            model=asdict(model_config),
            optimizer=optimizer,
            scheduler=scheduler,
            tokenizer=tokenizer.to_dict(),
            compile=cfg.get("compile", False),
            init_from=init_from,
            load_init_weights=not continues_finetune,
        )
    log.info(
        "model: %s parameters (%s), vocab %d, context %d",
        f"{module.model.num_params():,}",
        ", ".join(f"{k}={v}" for k, v in asdict(model_config).items() if k != "vocab_size"),
        model_config.vocab_size,
        model_config.context_length,
    )
    logged: dict[str, float] = {}  # a stopped run's figures up to its last step, when finished
    try:
        if cfg.get("train", True):
            stage["training"] = True
            # running(): what escapes training_errors names the group whose code raised it
            mark("fit")
            with running(), training_errors(trainer, datamodule.batch_size, output_dir):
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
                if ckpt_path and 0 < trainer.max_steps <= hparams_step(ckpt_path):
                    run = saved_run_dir(Path(ckpt_path))
                    logged = _finish_stopped_run(trainer, module, datamodule, run)
        if cfg.get("validate_after", False):
            if not cfg.get("train", True) and ckpt_path is not None:
                # nothing trained in this call: validate the checkpoint's weights, not random ones
                trainer.validate(
                    module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True
                )
            else:
                trainer.validate(module, datamodule=datamodule)
    finally:
        finish_loggers(loggers)
    # (the module's "step" and "epoch" only place the loggers' rows: summary.json has both)
    metrics = logged | {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if torch.is_tensor(v) and k not in ("step", "epoch")
    }
    if trainer.is_global_zero:
        write_run_summary(
            output_dir, trainer, module.model.num_params(), started, metrics, continued_from
        )
        log.info("%s", next_commands(output_dir.resolve(), trainer))
    return metrics


def next_commands(run_dir: Path, trainer: Any = None) -> str:
    """Where the run went and the commands that use it, for the last lines of a run: real
    commands (quoted), the continuation training twice as long as this run did."""
    longer = ""
    if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
        longer = " " + override("trainer.max_steps", 2 * trainer.max_steps)
    elif trainer is not None and trainer.max_epochs and trainer.max_epochs > 0:
        longer = " " + override("trainer.max_epochs", 2 * trainer.max_epochs)
    continued = continue_command(run_dir) + longer
    if longer:
        continued += "  # (twice as long: its own config, a longer run)"
    return (
        f"Run finished: {shown_path(run_dir)}\n"
        f"  sample:   {sample_command(run_dir)}\n"
        f"  continue: {continued}\n"
        f"  report:   {report_command(run_dir)}"
    )


def stopped_at_its_end(ckpt_path: str) -> bool:
    """Whether ``ckpt_path`` is the last.ckpt of a run that trained its last step but stopped
    before it finished (no summary.json): continuing it with the same length finishes it."""
    run = saved_run_dir(Path(ckpt_path))
    return run is not None and not (run / "summary.json").is_file()


def _finish_stopped_run(
    trainer: L.Trainer, module: Any, datamodule: Any, run: Path
) -> dict[str, float]:
    """The end of a run that stopped after its last step, which Lightning's fit skips: the
    validation of that step where one was due and is not in its metrics.csv. Returns the
    metrics it logged up to that step and the epoch's loss (the final figures of its summary)."""
    step = trainer.global_step
    rows = logged_rows(run)
    logged = [r for r in rows if r.get("val/loss") and row_step(r) == step]
    # Lightning validates every val_check_batch batches and at an epoch's end
    due = any(
        isinstance(n, int) and n > 0 and step % n == 0
        for n in (trainer.val_check_batch, trainer.num_training_batches)
    )
    # decided on the main process (the record may be there only): every process validates, or none
    validate = trainer.strategy.broadcast(due and not logged, src=0)
    log.info(
        "The run had trained its last step (%d) but stopped before it finished: %s",
        step,
        "validating that step, then its summary" if validate else "its summary",
    )
    if validate:
        trainer.validate(module, datamodule=datamodule)
    figures = last_logged(rows, step)
    # the epoch's mean loss, logged where training ends: from the sums the checkpoint holds
    # (under DDP, the main process's)
    sums = module.train_epoch_loss
    if not any(r.get("train/epoch_loss") and row_step(r) == step for r in rows) and sums.count > 0:
        figures["train/epoch_loss"] = float(sums.total / sums.count)
    return figures


def hparams_step(ckpt_path: str) -> int:
    """The global step a checkpoint was saved at (0 when it does not say)."""
    return int(read_checkpoint(ckpt_path, mmap=True).get("global_step", 0))


def _short_config(output_dir: Path) -> str:
    """The config in one line: the options chosen and the overrides given (in full: the run
    directory's config.yaml; ``print_config=true`` prints it)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return f"config: {shown_path(output_dir / 'config.yaml')}"
    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if "/" not in k and v}
    chosen = " ".join(f"{k}={choices[k]}" for k in ("data", "model", "trainer") if k in choices)
    chosen += "".join(f" {k}={choices[k]}" for k in ("experiment", "ablation") if k in choices)
    given = " ".join(hydra_cfg.overrides.task) or "none"
    return (
        f"config: {chosen}; overrides: {given} (in full: {shown_path(output_dir / 'config.yaml')}"
        "; print_config=true prints it)"
    )


def _continuation_changes(
    cfg: DictConfig,
    ckpt_path: str,
    hparams: dict[str, Any],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
) -> dict[str, tuple[Any, Any]]:
    """What this continuation changes from the run it continues (its saved config; for a
    checkpoint outside a run directory, the optimizer and schedule its hyper_parameters hold),
    logged in one line; refused where it changes what is trained, unless
    ``continue_with_changes=true``. Also removes the temporaries a killed save left there."""
    run = saved_run_dir(Path(ckpt_path))
    if run is not None:
        remove_stale_run_temporaries(run)
    saved_config = run / ".hydra" / "config.yaml" if run is not None else None
    if saved_config is not None and saved_config.is_file():
        saved = OmegaConf.to_container(OmegaConf.load(saved_config), resolve=False)
        job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        now = OmegaConf.to_container(job_cfg, resolve=False)
        changes = config_changes(saved, now)
        same_batch = global_batch(saved) is not None and global_batch(saved) == global_batch(now)
        continued = str(run)
    else:
        changes, same_batch = hparams_changes(hparams, optimizer, scheduler), False
        continued = ckpt_path
    check_continuation(changes, continued, bool(cfg.get("continue_with_changes")), same_batch)
    step, max_steps = int(hparams_step(ckpt_path)), cfg.trainer.get("max_steps") or -1
    if cfg.get("train", True) and 0 < max_steps <= step and not stopped_at_its_end(ckpt_path):
        raise UserError(
            f"ckpt_path={ckpt_path} is at step {step}, and trainer.max_steps={max_steps}: "
            f"nothing left to train. Give the new length, e.g. trainer.max_steps={2 * step}."
        )
    log.info(
        "Continuing %s with its config; %s",
        shown_path(Path(continued)),
        f"changed: {list_changes(changes)}" if changes else "nothing changed",
    )
    return changes


def _model_config(cfg: DictConfig, vocab_size: int, finetuned: dict[str, Any] | None) -> Any:
    """The model's config (a GPTConfig, or an HFGPT2Config for ``model=hf_gpt2``); for a
    continued fine-tuning run, ``finetuned``: the one its checkpoint was trained with."""
    init_from = cfg.get("init_from")
    try:
        if finetuned is not None:
            model_config = GPTConfig(**finetuned)
        elif init_from:  # fine-tuning: the architecture is the checkpoint's (GPT-2's or ours)
            model_config = init_from_config(
                OmegaConf.to_container(cfg.model, resolve=True),
                init_from,
                vocab_size=vocab_size,
                context_length=cfg.data.context_length,
            )
        else:
            model_config = instantiate(cfg.model, vocab_size=vocab_size)
    except (TypeError, ValueError, InstantiationException) as error:
        cause = error.__cause__ if isinstance(error.__cause__, ValueError) else error
        raise UserError(f"Bad model configuration: {cause}") from error
    model_context = getattr(model_config, "context_length", None)
    if model_context is not None and model_context < cfg.data.context_length:
        raise UserError(
            f"model.context_length={model_context} is shorter than data.context_length="
            f"{cfg.data.context_length}, the windows the model is trained on; leave "
            "model.context_length unset (it follows data.context_length) or make it at least that."
        )
    return model_config


def _check_corpus_exists(datamodule: Any) -> None:
    """A corpus given as a path that does not exist is refused now; reading and tokenizing it
    waits for the Trainer (prepare_data, setup)."""
    if not datamodule.is_named_corpus and not Path(datamodule.source).expanduser().exists():
        load_corpus(datamodule.source)  # raises its one-line "neither a named corpus..." error


def train_or_exit(cfg: DictConfig) -> dict[str, Any]:
    """Run :func:`train`; a :class:`UserError` becomes one line on stderr and exit status 2
    (143 after a SIGTERM); ``LLM_SCRATCH_TRACEBACK=1`` shows the traceback instead."""
    with exit_on_user_error():
        try:
            return train(cfg)
        except InstantiationException as error:  # a config node's object refused its arguments
            cause = error.__cause__
            known = isinstance(cause, UserError | ValueError | TypeError)
            raise UserError(one_line(str(cause) if known else str(error))) from error
