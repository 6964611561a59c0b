"""The LightningModule that trains a plain-PyTorch GPT."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from llm_scratch.model import GPTConfig
from llm_scratch.model.factory import build_model
from llm_scratch.model.pretrained import load_initial_weights
from llm_scratch.train.metrics import TokenWeightedMean
from llm_scratch.train.optim import OptimizerConfig, SchedulerConfig, build_adamw, lr_multiplier
from llm_scratch.train.reliability import get_rng_states, set_rng_states


class GPTLightningModule(L.LightningModule):
    """Wraps :class:`GPT`; every constructor argument is a plain type, so checkpoints hold no
    pickled objects and load with ``torch.load(weights_only=True)``.

    Args:
        model: the :class:`GPTConfig` fields.
        optimizer: the :class:`OptimizerConfig` fields (AdamW).
        scheduler: the :class:`SchedulerConfig` fields.
        tokenizer: the tokenizer's description (``Tokenizer.to_dict()``), stored in every
            checkpoint so that a checkpoint can be decoded without the corpus.
        compile: run the model through ``torch.compile`` (the state_dict keys do not change).
        init_from: a Hugging Face GPT-2 checkpoint (directory or hub name) whose weights the
            model starts from (fine-tuning); ``model`` must match its architecture.
        load_init_weights: load ``init_from``'s weights now; False when the weights come from a
            checkpoint of the fine-tuned run being continued (``init_from`` is then only
            recorded, and need not exist any more). Not saved with the hyperparameters.

    ``model`` with ``backend: hf_gpt2`` (an :class:`HFGPT2Config`'s fields) trains Hugging Face's
    GPT2LMHeadModel instead of our GPT (see llm_scratch/model/hf_backend.py).
    """

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        tokenizer: dict[str, Any] | None = None,
        compile: bool = False,
        init_from: str | None = None,
        load_init_weights: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["load_init_weights"])
        self.model_config, self.model = build_model(model)
        if init_from and load_init_weights:
            load_initial_weights(self.model, init_from)
        self.optimizer_config = OptimizerConfig(**(optimizer or {}))
        self.scheduler_config = SchedulerConfig(**(scheduler or {}))
        # Kept out of the module tree, so state_dict keys stay "model.*" with or without compile.
        self.__dict__["_forward"] = torch.compile(self.model) if compile else self.model
        # Token-weighted means: exp of the mean cross-entropy is the perplexity, computed without
        # a second softmax (torchmetrics' Perplexity underflows to inf on confident models).
        # TokenWeightedMean, not MeanMetric: MeanMetric's NaN check syncs with the device per step.
        self.train_epoch_loss = TokenWeightedMean()
        self.val_loss = TokenWeightedMean()

    @classmethod
    def from_config(cls, config: GPTConfig, **kwargs: Any) -> GPTLightningModule:
        """A module for the model ``config`` (the other arguments as the constructor's)."""
        return cls(model=asdict(config), **kwargs)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self._forward(idx, targets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        _, loss = self(x, y)
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        self.train_epoch_loss.update(loss, y.numel())
        # Each self.log costs Lightning ~0.4 ms of bookkeeping on a CPU, whether or not the
        # value is written: log the learning rate only on the steps the loggers write (every
        # trainer.log_every_n_steps), and the epoch loss once, in on_train_epoch_end.
        if self._logs_this_step():
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0], on_step=True)
        return loss

    def _logs_this_step(self) -> bool:
        """Whether the loggers write this training step's metrics (Lightning's own rule)."""
        connector = getattr(self.trainer, "_logger_connector", None)
        return connector is None or connector.should_update_logs or bool(self.trainer.fast_dev_run)

    def on_train_epoch_end(self) -> None:
        if self.train_epoch_loss.update_called:
            # token-weighted mean over the epoch, synced across processes by torchmetrics
            # (sync_dist only quiets Lightning's warning about epoch-level values under DDP)
            self.log("train/epoch_loss", self.train_epoch_loss.compute(), sync_dist=True)
        # The sums are saved in checkpoints, so a run resumed mid-epoch averages the whole epoch.
        # An epoch that max_steps cut short keeps them for the run that continues it (see
        # reopen_epoch_stopped_by_max_steps).
        if not self._epoch_cut_short_by_max_steps():
            self.train_epoch_loss.reset()

    def _epoch_cut_short_by_max_steps(self) -> bool:
        trainer = self.trainer
        max_steps = trainer.max_steps
        at_max = max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps
        return at_max and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        _, loss = self(x, y)
        self.val_loss.update(loss, y.numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # synced across processes by torchmetrics
        self.val_loss.reset()
        # Already equal on every rank; sync_dist only quiets Lightning's warning (one all-reduce).
        self.log_dict({"val/loss": loss, "val/ppl": torch.exp(loss)}, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        groups = self.model.optimizer_param_groups(self.optimizer_config.weight_decay)
        trainer = self.trainer
        clips_mixed = "mixed" in str(trainer.precision) and bool(trainer.gradient_clip_val)
        optimizer = build_adamw(groups, self.optimizer_config, self.device, clips_mixed)
        sched = self.scheduler_config
        total = sched.total_steps or max(int(self.trainer.estimated_stepping_batches), 1)
        base_lr = self.optimizer_config.lr
        scheduler = LambdaLR(optimizer, lambda step: lr_multiplier(step, sched, total, base_lr))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # Exact resumption: Lightning saves no RNG state, so dropout after a resume would draw other
    # masks. The states are saved with every checkpoint and put back just before training goes on.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = get_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_states_to_restore = checkpoint.get("rng_states")
        trainer = self._trainer  # None when the module is loaded outside a Trainer
        iteration_based = trainer is not None and trainer.max_steps != -1
        reopen_epoch_stopped_by_max_steps(checkpoint, iteration_based)

    def on_train_start(self) -> None:
        states = getattr(self, "_rng_states_to_restore", None)
        if states is not None:
            set_rng_states(states)
            self._rng_states_to_restore = None
        fit = self.trainer.fit_loop
        progress = fit.epoch_progress.current
        if fit.restarted_mid_epoch and progress.processed == progress.ready:
            # Resumed after an epoch's last batch: Lightning has closed that epoch but would start
            # the next one as if resumed inside it, without counting it ready or calling
            # on_train_epoch_start, and a checkpoint of that epoch would then resume wrongly.
            # A plain epoch start instead.
            fit.reset_restart_stage()
        if self.trainer.world_size > 1:
            # Under DDP a resumed epoch restarts from its first batch, and the checkpoint holds
            # rank 0's sums only: start the epoch's mean afresh.
            self.train_epoch_loss.reset()


def reopen_epoch_stopped_by_max_steps(checkpoint: dict[str, Any], iteration_based: bool) -> bool:
    """Put a checkpoint's loop state back to the one Lightning resumes exactly, where it would not.

    Lightning (2.6) ends the epoch when ``max_steps`` is reached, whether or not the epoch is
    over: the epoch counts as finished (``current_epoch`` + 1) while the batch counter keeps the
    batches done. A run continued from that checkpoint with a larger ``max_steps`` then started
    the next epoch at that batch count, so the rest of the stopped epoch was never trained and the
    next one was cut short. And a checkpoint saved after an epoch's last batch (at validation or
    epoch end) resumes wrongly whenever ``max_steps`` is set (Lightning issue #19617): steps one
    off, the next epoch's windows skipped.

    Both are rewritten to the state Lightning saves just after that batch (the periodic
    ``last.ckpt``'s), from which it resumes exactly and which the data module's saved position
    matches. Called by the module's ``on_load_checkpoint``, before Lightning restores the loops;
    ``iteration_based``: the continued run sets ``max_steps``. Returns whether it changed the
    checkpoint.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    try:
        epochs = fit["epoch_progress"]
        batches = fit["epoch_loop.batch_progress"]
        loop_state = fit["epoch_loop.state_dict"]
        loop_state["_batches_that_stepped"]
    except KeyError:  # weights only, or another Lightning's layout: leave it to Lightning
        return False
    counts = ("ready", "started", "processed", "completed")
    epoch, batch = epochs["current"], batches["current"]
    if len({batch[c] for c in counts}) != 1 or batch["completed"] == 0:
        return False  # saved during a batch, or before the epoch's first one
    ready = epoch["ready"]
    if epoch["started"] != ready or epoch["processed"] not in (ready - 1, ready):
        return False
    # After the epoch-end hooks (not during validation), the batch loop counted one more batch.
    after_epoch_end = epoch["processed"] == ready
    if batches.get("is_last_batch"):
        if not iteration_based:
            return False  # Lightning resumes the finished epoch right without max_steps
    elif not after_epoch_end:
        return False  # mid-epoch, saved at validation: a state Lightning resumes
    for key in ("current", "total"):
        shift = epochs[key]["ready"] - 1 - epochs[key]["processed"]
        epochs[key]["processed"] += shift
        epochs[key]["completed"] = epochs[key]["processed"]
        batches[key]["completed"] -= 1  # "restarted on train batch end"
    if after_epoch_end:
        loop_state["_batches_that_stepped"] -= 1  # Lightning adds it back on that restart
    checkpoint["epoch"] = epoch["completed"]
    return True
