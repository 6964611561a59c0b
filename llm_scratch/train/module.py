"""The LightningModule that trains a plain-PyTorch GPT."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from llm_scratch.checkpoint import load_init_weights as load_initial_model_weights
from llm_scratch.compat import (
    epoch_cut_short_by_max_steps,
    loggers_write_this_step,
    reopen_epoch_stopped_by_max_steps,
    start_next_epoch_plainly,
)
from llm_scratch.data.tokenizers import tokenizer_from_dict
from llm_scratch.errors import UserError
from llm_scratch.model import GPTConfig
from llm_scratch.model.factory import build_model
from llm_scratch.train.checkpointing import get_rng_states, set_rng_states
from llm_scratch.train.metrics import BitsPerByte, TokenWeightedMean, bpb_sums
from llm_scratch.train.optim import OptimizerConfig, SchedulerConfig, build_adamw, lr_multiplier
from llm_scratch.train.sharding import configure_sharding
from llm_scratch.utils.memory import is_out_of_memory

# A batch: (inputs, targets) windows of a corpus, or an instruction batch (a dict, see
# llm_scratch/data/instruct.py's InstructionCollator).
Batch = tuple[torch.Tensor, torch.Tensor] | dict[str, Any]


def unpack_batch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(inputs, targets, real input tokens, targets the loss is over) of a batch.

    An instruction batch is right-padded: the model needs no attention mask for it (a real
    token never attends to the padding after it), and its counts leave the padding (and, for
    the targets, the masked prompt tokens) out. They were counted on the CPU by the collate
    function, so no step waits for the device.
    """
    if isinstance(batch, dict):
        return batch["input_ids"], batch["targets"], batch["num_tokens"], batch["num_targets"]
    x, y = batch
    return x, y, y.numel(), y.numel()


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
        init_from: the weights the model starts from (fine-tuning): a Hugging Face GPT-2
            checkpoint (directory or hub name) or a checkpoint of ours (a run directory or a
            ``.ckpt`` file); ``model`` must match its architecture.
        load_init_weights: load ``init_from``'s weights now (the job sets it when a fine-tuning
            run starts). False by default, so that a module rebuilt from a checkpoint
            (``load_from_checkpoint``, or continuing a fine-tuned run) takes the trained weights
            and needs no GPT-2 checkpoint: ``init_from`` is then only on record. Not saved with
            the hyperparameters.
        prompt_template: the instruction data's prompt template (``PromptTemplate.to_dict()``),
            so that sampling from a checkpoint formats prompts as it was trained. None takes the
            data module's, if it has one, when fitting starts.

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
        load_init_weights: bool = False,
        prompt_template: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["load_init_weights"])
        try:
            self.model_config, self.model = build_model(model)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            raise UserError(
                f"Out of memory while building the model ({_describe(model)}): choose a smaller "
                "one (model=gpt-nano, fewer model.n_layer or model.n_embd), or a machine with "
                "more memory."
            ) from error
        if init_from and load_init_weights:
            load_initial_model_weights(self.model, init_from, tokenizer)
        self.optimizer_config = OptimizerConfig(**(optimizer or {}))
        self.scheduler_config = SchedulerConfig(**(scheduler or {}))
        # Kept out of the module tree, so state_dict keys stay "model.*" with or without compile.
        self.__dict__["_forward"] = torch.compile(self.model) if compile else self.model
        if not compile:  # (a compiled model would compile for this one-off shape)
            # Lightning's model summary runs one forward of this to count FLOPs and show shapes
            context = self.model_config.context_length
            self.example_input_array = torch.zeros(1, context, dtype=torch.long)
        # Token-weighted means: exp of the mean cross-entropy is the perplexity, computed without
        # a second softmax (torchmetrics' Perplexity underflows to inf on confident models).
        # TokenWeightedMean, not MeanMetric: MeanMetric's NaN check syncs with the device per step.
        self.train_epoch_loss = TokenWeightedMean()
        self.val_loss = TokenWeightedMean()
        # val/bpb: each token id's length in UTF-8 bytes, from the tokenizer (set in setup)
        self.val_bpb = BitsPerByte()
        self.token_byte_lengths: torch.Tensor | None = None

    @classmethod
    def from_config(cls, config: GPTConfig, **kwargs: Any) -> GPTLightningModule:
        """A module for the model ``config`` (the other arguments as the constructor's)."""
        return cls(model=asdict(config), **kwargs)

    def setup(self, stage: str) -> None:
        # The template goes into the hyperparameters, and so into every checkpoint.
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        template = getattr(datamodule, "prompt_template", None)
        if template is not None and self.hparams.get("prompt_template") is None:
            self.hparams["prompt_template"] = template.to_dict()
        if self.token_byte_lengths is None:
            self.token_byte_lengths = token_byte_table(datamodule, self.hparams.get("tokenizer"))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self._forward(idx, targets)

    def training_step(self, batch: Batch, batch_idx: int):
        x, y, _, n_targets = unpack_batch(batch)
        _, loss = self(x, y)
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        self.train_epoch_loss.update(loss, n_targets)
        # Each self.log costs Lightning ~0.4 ms of bookkeeping on a CPU, whether or not the
        # value is written: log the learning rate only on the steps the loggers write (every
        # trainer.log_every_n_steps), and the epoch loss once, in on_train_epoch_end.
        if loggers_write_this_step(self.trainer):
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0], on_step=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if loggers_write_this_step(self.trainer):
            self._log_step(on_epoch=False)

    def _log_step(self, on_epoch: bool = True) -> None:
        """Write this row of the loggers (metrics.csv, TensorBoard, W&B) at the number of
        optimizer steps done, the step the console, the checkpoint names and samples.jsonl
        give: Lightning writes a logged ``step`` metric as the row's step. (Without it, Lightning
        2.6 writes a training step's row and the validation after it one lower, the epoch's row
        not.) Training rows are logged from on_train_batch_end, after the optimizer step, and
        ``epoch`` as Lightning adds it to rows without a ``step``."""
        # sync_dist: the same numbers on every rank; it only quiets Lightning's epoch-level warning
        for key, value in (("step", self.trainer.global_step), ("epoch", self.current_epoch)):
            self.log(key, float(value), on_step=not on_epoch, on_epoch=on_epoch, sync_dist=on_epoch)

    def on_train_epoch_end(self) -> None:
        if self.train_epoch_loss.update_called:
            # token-weighted mean over the epoch, synced across processes by torchmetrics
            # (sync_dist only quiets Lightning's warning about epoch-level values under DDP)
            self.log("train/epoch_loss", self.train_epoch_loss.compute(), sync_dist=True)
            self._log_step()
        # The sums are saved in checkpoints, so a run resumed mid-epoch averages the whole epoch.
        # An epoch that max_steps cut short keeps them for the run that continues it (see
        # reopen_epoch_stopped_by_max_steps).
        if not epoch_cut_short_by_max_steps(self.trainer):
            self.train_epoch_loss.reset()

    def validation_step(self, batch: Batch, batch_idx: int):
        x, y, _, n_targets = unpack_batch(batch)
        logits, loss = self(x, y)
        self.val_loss.update(loss, n_targets)
        lengths = self.token_byte_lengths
        if lengths is not None:
            if lengths.device != y.device:  # once: the table is made before the model moves
                lengths = self.token_byte_lengths = lengths.to(y.device)
            self.val_bpb.update(*bpb_sums(loss, n_targets, logits, y, lengths))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # synced across processes by torchmetrics
        self.val_loss.reset()
        # Already equal on every rank; sync_dist only quiets Lightning's warning (one all-reduce).
        self.log_dict({"val/loss": loss, "val/ppl": torch.exp(loss)}, prog_bar=True, sync_dist=True)
        if self.val_bpb.update_called:
            self.log("val/bpb", self.val_bpb.compute(), sync_dist=True)
            self.val_bpb.reset()
        self._log_step()

    def configure_model(self) -> None:
        # Only trainer=fsdp's strategy (ModelParallelStrategy) gives the module a device mesh:
        # shard the model there, before the optimizer is built on its sharded parameters.
        if self.device_mesh is not None:
            configure_sharding(self.model, self.trainer, self.device_mesh)

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
        start_next_epoch_plainly(self.trainer)
        if self.trainer.world_size > 1:
            # Under DDP a resumed epoch restarts from its first batch, and the checkpoint holds
            # rank 0's sums only: start the epoch's mean afresh.
            self.train_epoch_loss.reset()


def token_byte_table(datamodule: Any, described: dict | None) -> torch.Tensor | None:
    """The byte length of each token id, from the data module's tokenizer or else the one the
    module was built with; None when neither is known (no val/bpb then)."""
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is None and described:
        tokenizer = tokenizer_from_dict(described)
    lengths = getattr(tokenizer, "token_byte_lengths", None)
    if lengths is None:
        return None
    table = torch.tensor(lengths(), dtype=torch.long)
    # the data's end-of-text id counts no bytes either (prepared character shards reserve a
    # control character for it, which the character tokenizer alone takes for text)
    eos_id = getattr(datamodule, "eos_id", None)
    if isinstance(eos_id, int) and 0 <= eos_id < len(table):
        table[eos_id] = 0
    return table


def _describe(model: dict) -> str:
    keys = ("n_layer", "n_head", "n_embd", "vocab_size", "context_length")
    return ", ".join(f"{k}={model[k]}" for k in keys if k in model) or "its config"
