"""Callbacks: text samples at each validation, throughput and MFU, plain progress lines, a
finite-loss guard, a checkpoint on SIGTERM, a warning for runs that never validate; and
``build_callbacks``, the list a run's config asks for."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import (
    Checkpoint,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from llm_scratch.constraints import INT64_MAX, Check, Count, NewTokens
from llm_scratch.errors import NonFiniteLossError, UserError
from llm_scratch.sample import sample_responses, sample_texts
from llm_scratch.train.checkpointing import wait_for_checkpoints
from llm_scratch.train.module import unpack_batch
from llm_scratch.train.sharding import is_sharded
from llm_scratch.utils.flops import known_peak_flops

log = logging.getLogger(__name__)


class TextSampler(L.Callback):
    """Generates short samples from fixed prompts, at the end of every ``every_n_validations``-th
    validation, and of the run's last when it comes at the last step.

    On a corpus: a continuation of one prompt (``prompt=None`` takes the data module's default,
    "Every effort moves you" for The Verdict). On instruction data (a data module with
    ``sample_examples``): the responses to its fixed validation prompts, in one padded batch,
    also before the first training step, so ``samples.jsonl`` shows generation before and after
    fine-tuning side by side (with each example's expected output); a ``prompt`` given here is
    sampled instead.

    Samples are appended to ``<output_dir>/samples.jsonl`` (one line per prompt), printed to
    the log, and sent to W&B (a table) or TensorBoard when those loggers are active.
    """

    def __init__(
        self,
        output_dir: Annotated[str, Check(nonempty=True)],
        # the ranges (llm_scratch/constraints.py): checked before a run starts
        prompt: Annotated[str | None, Check(nonempty=True, why="null: the data's prompt")] = None,
        max_new_tokens: NewTokens = 50,
        temperature: Annotated[float, Check(ge=0, why="0: greedy")] = 0.0,
        top_k: Count | None = None,
        seed: Annotated[int, Check(ge=0, le=INT64_MAX)] = 1234,
        every_n_validations: Count = 1,
    ) -> None:
        self.path = Path(output_dir) / "samples.jsonl"
        self.every_n_validations = every_n_validations
        self.validations = 0  # counted across a continued run (the checkpoint keeps it)
        self._unsampled: tuple[int, int] | None = None  # (epoch, step) of a validation not sampled
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed

    def _instructions(self, trainer: L.Trainer) -> bool:
        # looked up on the class: the property itself needs the data set up
        return self.prompt is None and hasattr(type(trainer.datamodule), "sample_examples")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not samples_here(trainer, pl_module):
            return
        # "before": the model as fine-tuning finds it (not again when a run is continued)
        if trainer.global_step == 0 and self._instructions(trainer):
            self._write(trainer, self.answer_instructions(trainer, pl_module))

    def state_dict(self) -> dict[str, int]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.validations = state_dict.get("validations", 0)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        self._unsampled = (trainer.current_epoch, trainer.global_step)
        # a sample costs several training steps on a CPU: every n-th validation, and the run's
        # last (in on_train_end), which the sweep report shows
        if self.validations % self.every_n_validations == 0:
            self._sample(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the last validation, when it came at the last step and was not due
        if self._unsampled is not None and self._unsampled[1] == trainer.global_step:
            self._sample(trainer, pl_module)

    def _sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The samples of the validation in ``_unsampled`` (the model has not trained since)."""
        epoch, step = self._unsampled
        self._unsampled = None
        if not samples_here(trainer, pl_module):
            return
        if self._instructions(trainer):
            self._write(trainer, self.answer_instructions(trainer, pl_module, epoch))
            return
        datamodule = trainer.datamodule
        tokenizer = datamodule.tokenizer
        prompt = self.prompt if self.prompt is not None else datamodule.default_prompt
        text = self.sample(pl_module, tokenizer, prompt)
        if not trainer.is_global_zero:
            return
        record = {"epoch": epoch, "step": step, "text": text}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        log.info("sample at step %d: %r", step, text)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text("samples", columns=["step", "text"], data=[[step, text]])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", text, global_step=step)

    def sample(self, pl_module: L.LightningModule, tokenizer, prompt: str) -> str:
        texts = sample_texts(
            pl_module.model,
            tokenizer,
            prompt,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            seed=self.seed,
        )
        return texts[0]

    def answer_instructions(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int | None = None
    ) -> list[dict]:
        """One record per fixed validation example: its instruction, input, the model's
        response now and the expected output (``epoch``: the validation's, default the
        current one)."""
        datamodule = trainer.datamodule
        examples = datamodule.sample_examples
        template = datamodule.prompt_template
        prompts = [template.format(e.instruction, e.input) for e in examples]
        responses = sample_responses(
            pl_module.model,
            datamodule.tokenizer,
            prompts,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            seed=self.seed,
            batch_size=max(len(prompts), 1),
        )
        return [
            {
                "epoch": trainer.current_epoch if epoch is None else epoch,
                "step": trainer.global_step,
                "instruction": e.instruction
                if e.instruction is not None
                else template.default_instruction,
                "input": e.input,
                "response": response,
                "expected": e.output,
                "text": prompt + response,
            }
            for e, prompt, response in zip(examples, prompts, responses, strict=True)
        ]

    def _write(self, trainer: L.Trainer, records: list[dict]) -> None:
        if not records or not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
        step = trainer.global_step
        for record in records:
            log.info(
                "response at step %d to %r: %r", step, record["instruction"], record["response"]
            )
        columns = ["step", "instruction", "input", "response", "expected"]
        rows = [[r[c] for c in columns] for r in records]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text("samples", columns=columns, data=rows)
            elif isinstance(logger, TensorBoardLogger):
                text = "\n\n".join(
                    f"**{r['instruction']}** {r['input']}\n\n{r['response']}" for r in records
                )
                logger.experiment.add_text("samples", text, global_step=step)


def samples_here(trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
    """Whether this process generates the samples: rank 0 alone, except for a sharded model
    (trainer=fsdp), which runs only when every process runs it (each forward gathers the
    weights from all of them); all then generate the same text and rank 0 writes it."""
    return trainer.is_global_zero or is_sharded(pl_module.model)


class ThroughputLogger(L.Callback):
    """Logs tokens seen, tokens per second and, where a peak is known, model FLOPs utilisation.

    Tokens are real input tokens: the padding of instruction batches is not counted.

    Timing is read every ``log_every_n_steps`` optimizer steps, so nothing forces a device sync
    per step. ``peak_flops`` is the device's peak FLOP/s for the training dtype (for all
    processes together it is multiplied by the world size); ``None`` uses Lightning's table of
    known GPUs, and on a CPU gives no MFU unless configured (``bench`` measures a CPU peak).
    """

    def __init__(
        self,
        log_every_n_steps: Count = 10,
        peak_flops: Annotated[float | None, Check(gt=0, why="null: known GPUs only")] = None,
    ) -> None:
        self.log_every_n_steps = log_every_n_steps
        self.peak_flops = peak_flops
        self.tokens_seen = 0
        self._window_tokens = 0
        self._window_start: float | None = None
        self._flops_per_token = 0
        self.last_tokens_per_sec: float | None = None
        self._train_start: float | None = None
        self._tokens_at_start = 0
        self._step_at_batch_start = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flops_per_token = pl_module.model.flops_per_token()
        if self.peak_flops is None:
            self.peak_flops = known_peak_flops(trainer.strategy.root_device, trainer.precision)
        self._window_start = self._train_start = time.perf_counter()
        self._tokens_at_start = self.tokens_seen

    @property
    def average_tokens_per_sec(self) -> float | None:
        """Tokens per second over this process's whole training, validation time included."""
        if self._train_start is None:
            return None
        elapsed = time.perf_counter() - self._train_start
        return (self.tokens_seen - self._tokens_at_start) / max(elapsed, 1e-9)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # every micro-batch's real tokens count (padding does not); the other ranks' batches are
        # taken to be as large as this one's
        tokens = unpack_batch(batch)[2] * trainer.world_size
        self.tokens_seen += tokens
        self._window_tokens += tokens
        # Optimizer steps, not batches: under gradient accumulation only a step's last batch
        # moves global_step. Logging then, at multiples of n, is when Lightning writes the logs.
        step = trainer.global_step
        if step == self._step_at_batch_start or step % self.log_every_n_steps:
            return
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        tokens_per_sec = self._window_tokens / max(now - self._window_start, 1e-9)
        self.last_tokens_per_sec = tokens_per_sec
        metrics = {
            "train/tokens_seen": float(self.tokens_seen),
            "train/tokens_per_sec": tokens_per_sec,
        }
        if self.peak_flops:
            achieved = self._flops_per_token * tokens_per_sec
            metrics["train/mfu"] = achieved / (self.peak_flops * trainer.world_size)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self._window_tokens = 0
        self._window_start = now

    def state_dict(self) -> dict:
        return {"tokens_seen": self.tokens_seen}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens_seen = state_dict["tokens_seen"]


class LineProgressBar(ProgressBar):
    """Progress as plain lines, for logs that are not a terminal (CI, clusters, redirected output).

    A line every ``refresh_rate`` training batches (batches, as Lightning's own bars count) and
    one after each validation; no carriage returns or colours, so a log file reads top to bottom.
    """

    def __init__(self, refresh_rate: int = 10) -> None:
        super().__init__()
        self.refresh_rate = refresh_rate
        self._enabled = True
        self._start = time.perf_counter()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, file=sys.stdout, flush=True)

    def _format(self, metrics: dict) -> str:
        parts = []
        for key, value in metrics.items():
            if key == "v_num":
                continue
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        return "  ".join(parts)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()
        self._first_step = trainer.global_step
        total = run_steps(trainer)
        self._print(
            f"training: {trainer.num_training_batches} batches per epoch, {total} steps"
            + (f" (from step {trainer.global_step})" if trainer.global_step else "")
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        per_epoch = trainer.num_training_batches
        if (batch_idx + 1) % self.refresh_rate == 0 or batch_idx + 1 == per_epoch:
            elapsed = time.perf_counter() - self._start
            total, step = run_steps(trainer), trainer.global_step
            done = step - self._first_step
            eta = f", ETA {elapsed / done * (total - step):.0f}s" if done > 0 else ""
            # the training figures only: a val/ figure here would be the previous validation's
            # (validation prints its own line when it is done)
            shown = self.get_metrics(trainer, pl_module)
            metrics = self._format({k: v for k, v in shown.items() if not k.startswith("val/")})
            self._print(
                f"step {step}/{total} (epoch {trainer.current_epoch}, batch {batch_idx + 1}/"
                f"{per_epoch}) [{elapsed:.0f}s{eta}]  {metrics}"
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        shown = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
        self._print(f"validation at step {trainer.global_step}: {self._format(shown)}")


def run_steps(trainer: L.Trainer) -> int:
    """The optimizer steps the run ends at: max_steps or the epochs, whichever comes first
    (Lightning's estimate, which counts both and gradient accumulation)."""
    return int(trainer.estimated_stepping_batches)


class RunRichProgressBar(RichProgressBar):
    """Lightning's Rich bar, counting toward what the run will actually do: an epoch that
    ``max_steps`` cuts short has that many batches (so the ETA is right), and the epoch
    count ends at the epoch where the run ends, not at ``max_epochs``."""

    def _batches(self) -> tuple[int, int]:
        """(batches of this epoch the run will do, the index of the run's last epoch)."""
        trainer = self.trainer
        per_epoch = trainer.num_training_batches
        if not isinstance(per_epoch, int) or per_epoch < 1:
            return per_epoch, trainer.current_epoch
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        left = (run_steps(trainer) - trainer.global_step) * trainer.accumulate_grad_batches
        this_epoch = min(per_epoch, done + left)
        later = max(left - (per_epoch - done), 0)
        return this_epoch, trainer.current_epoch + math.ceil(later / per_epoch)

    @property
    def total_train_batches(self) -> int | float:
        return self._batches()[0]

    def _init_progress(self, trainer: L.Trainer) -> None:
        streams = sys.stdout, sys.stderr
        super()._init_progress(trainer)
        self._log_lines_above_the_bar(streams)

    def _stop_progress(self) -> None:
        for handler, stream in getattr(self, "_rerouted", []):
            handler.setStream(stream)
        self._rerouted = []
        super()._stop_progress()

    def _log_lines_above_the_bar(self, streams: tuple) -> None:
        """Rich's live bar replaces sys.stdout and sys.stderr with proxies that print above it,
        but logging's stream handlers keep the streams they were made with and wrote into the
        bar: point them at the proxies while the bar is shown."""
        if getattr(self, "_rerouted", []):
            return
        proxies = {id(streams[0]): sys.stdout, id(streams[1]): sys.stderr}
        proxies.update({id(sys.__stdout__): sys.stdout, id(sys.__stderr__): sys.stderr})
        self._rerouted = []
        for handler in _stream_handlers():
            proxy = proxies.get(id(handler.stream))
            if proxy is not None and proxy is not handler.stream:
                self._rerouted.append((handler, handler.setStream(proxy)))

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch}/{self._batches()[1]}"
        if len(self.validation_description) > len(description):  # as Lightning's: no flicker
            description = f"{description:{len(self.validation_description)}}"
        return description


def _stream_handlers() -> list[logging.StreamHandler]:
    """The console handlers of every logger (files excluded), each once."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = (h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers)
    found: dict[int, logging.StreamHandler] = {}
    for handler in handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            found.setdefault(id(handler), handler)
    return list(found.values())


class FiniteLossGuard(L.Callback):
    """Stops training when the loss becomes NaN or infinite, naming the step and learning rate,
    before any checkpoint of the broken state is written.

    The check reads one flag from the device every ``check_every_n_steps`` optimizer steps (no
    sync per step; with gradient accumulation a step is several batches) and before every
    checkpoint save: ``on_save_checkpoint`` runs before the file is
    written, so ``last.ckpt`` and the best checkpoint keep the last good state.
    """

    def __init__(self, check_every_n_steps: Count = 1) -> None:
        if check_every_n_steps < 1:
            raise UserError(
                f"callbacks.finite_loss.check_every_n_steps must be >= 1, got {check_every_n_steps}"
            )
        self.check_every_n_steps = int(check_every_n_steps)
        self._first_bad: torch.Tensor | None = None  # step of the first bad loss, -1: none
        self._bad_value: torch.Tensor | None = None
        self._lrs: dict[int, float] = {}
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step
        if trainer.optimizers:
            self._lrs[self._step] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach().float().reshape(())
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_value = torch.zeros((), device=loss.device)
        new = (~torch.isfinite(loss)) & (self._first_bad < 0)
        self._first_bad = torch.where(new, self._step, self._first_bad)
        self._bad_value = torch.where(new, loss, self._bad_value)
        # Optimizer steps, not batches: only the last batch of an accumulated step moves
        # global_step past the step this batch started in (self._step).
        step = trainer.global_step
        if step > self._step and step % self.check_every_n_steps == 0:
            self.check()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check()

    def check(self) -> None:
        if self._first_bad is None:
            return
        step = int(self._first_bad.item())  # the one device sync
        if step < 0:
            self._lrs.clear()  # every loss so far was finite
            return
        value = float(self._bad_value.item())
        lr = self._lrs.get(step)
        lr_text = f"learning rate {lr:.3g}" if lr is not None else "learning rate unknown"
        raise NonFiniteLossError(
            f"The training loss became {value} at step {step} ({lr_text}); training stopped "
            "before saving that state, so the checkpoints already saved are the last good ones. "
            "Lower optimizer.lr, lengthen scheduler.warmup_steps or keep "
            "trainer.gradient_clip_val, then continue with ckpt_path=<the run directory>."
        )


class SigtermCheckpoint(Checkpoint):
    """On SIGTERM (what cluster schedulers send before preempting a job) save ``last.ckpt`` at
    the end of the current training batch; Lightning then stops the run.

    Lightning 2.6 only sets ``trainer.received_sigterm`` and raises ``SIGTERMException`` after the
    batch, without saving anything. The checkpoint written here is the state Lightning's
    ``every_n_train_steps`` checkpoints hold, so resuming from it continues exactly. A
    ``Checkpoint``, so Lightning runs it after the other callbacks: their state of the batch
    (the tokens counted, for one) is in the file.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.saved_step: int | None = None
        self._validated_at: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.received_sigterm:
            self._save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._validated_at = trainer.global_step
        # The signal came in the validation's last batch or its end hooks: saved here, the state
        # ModelCheckpoint saves at a validation's end, which Lightning resumes exactly (decided
        # on the main process: every process saves, or none)
        if trainer.strategy.broadcast(bool(trainer.received_sigterm), src=0):
            self._save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # The signal came after this callback's on_train_batch_end: Lightning raises at the end
        # of the batch, a state it also resumes from exactly. When a validation ran at that
        # step (the signal came during it or after its end hooks), Lightning 2.6 would resume
        # that state one logged step late (it skips the validation done and counts the step
        # again): not saved, the last periodic checkpoint stays.
        validated = self._validated_at == trainer.global_step
        if isinstance(exception, SIGTERMException) and not trainer.validating and not validated:
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        if self.saved_step is not None or trainer.sanity_checking:
            return
        log.info("SIGTERM received: saving %s at step %d", self.path, trainer.global_step)
        trainer.save_checkpoint(self.path, weights_only=False)  # (None: an info line says so)
        self.saved_step = trainer.global_step


class PeriodicCheckpoint(ModelCheckpoint):
    """ModelCheckpoint's ``every_n_train_steps`` checkpoint, saved after the validation when one
    runs at that step.

    Lightning resumes a checkpoint of such a step as if the validation had run before it was
    saved: it skips it. Saved before it (ModelCheckpoint saves in ``on_train_batch_end``), a run
    killed during that validation continued without it: no val/loss of that step, no best
    checkpoint, and a run killed in its final validation was left with nothing to train."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deferred_step: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if _validation_follows(trainer):
            self._deferred_step = trainer.global_step
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._deferred_step is not None and self._deferred_step == trainer.global_step:
            self._deferred_step = None
            super().on_train_batch_end(trainer, pl_module, None, None, 0)


def _validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates after the training batch that just ended (its own rule,
    which it applies next with the same state; False where that rule is not found)."""
    loop = trainer.fit_loop.epoch_loop
    should_check = getattr(loop, "_should_check_val_fx", None)
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if should_check is None or fetcher is None or trainer.sanity_checking:
        return False
    return bool(should_check(fetcher))


class FinalCheckpoint(Checkpoint):
    """Save ``last.ckpt`` where training ends, unless it already holds that step.

    Lightning 2.6's ModelCheckpoint saves ``last.ckpt`` at validations and every
    ``every_n_train_steps``, and at an epoch's end only when validation runs once per epoch: a
    run that validates every N steps (``trainer.val_check_interval=N``) and stops between two
    validations kept the older step, so continuing it trained the steps after it again. Saved
    in the hook where Lightning saves its epoch-end checkpoints (after the module's), a state it
    resumes from exactly.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or not _training_ends_here(trainer):
            return
        # decided on the main process (the file may be there only), and saved by every process
        wait_for_checkpoints(trainer)  # a periodic save of this step may still be writing
        if trainer.strategy.broadcast(_saved_step(self.path) != trainer.global_step, src=0):
            trainer.save_checkpoint(self.path, weights_only=False)  # (None: an info line says so)


def _training_ends_here(trainer: L.Trainer) -> bool:
    """Whether the fit loop stops after this epoch: max_steps reached, the last epoch, or a
    callback's request."""
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    return (
        trainer.should_stop
        or (max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps)
        or (max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs)
    )


def _saved_step(path: Path) -> int | None:
    """The global step of the checkpoint file at ``path``; None if there is none (or it is a
    sharded checkpoint's folder)."""
    if not path.is_file():
        return None
    try:
        return int(
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        )
    except Exception:  # damaged, or not one of ours: save anew
        return None


class NoValidationWarning(L.Callback):
    """Warns at the start of training when ``trainer.max_steps`` ends the run before its first
    validation: such a run succeeds without a val/loss, a sample or a best checkpoint."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0:
            # a continued run has not validated in this process yet: until it does, the best
            # checkpoint's val/loss is missing (the checkpoint it continues from keeps its best)
            _quiet_missing_monitor()
            return
        first = steps_to_first_validation(trainer)
        if first is not None and 0 < trainer.max_steps < first:
            log.warning(
                "trainer.max_steps=%d ends the run before its first validation (after %d steps): "
                "it will log no val/loss, write no sample and save no best checkpoint; raise "
                "trainer.max_steps or validate sooner with trainer.val_check_interval=<steps>.",
                trainer.max_steps,
                first,
            )
            # ...which says it all: not also ModelCheckpoint's "could not find the monitored key"
            _quiet_missing_monitor()


def _quiet_missing_monitor() -> None:
    warnings.filterwarnings(
        "ignore",
        message=r"`ModelCheckpoint\(monitor=.*could not find the monitored key",
        module=r"lightning\.pytorch\.callbacks\.model_checkpoint",
    )


def steps_to_first_validation(trainer: L.Trainer) -> int | None:
    """Optimizer steps before the first validation of a run started from scratch (Lightning's
    schedule, known once the data is set up); None when no validation is planned or its time is
    not counted in batches."""
    if trainer.limit_val_batches == 0:
        return None  # validation switched off
    per_epoch = trainer.num_training_batches
    every_n_epochs = trainer.check_val_every_n_epoch
    interval = trainer.val_check_batch
    if not isinstance(per_epoch, int) or interval is None:
        return None  # an iterable dataset without a length, or validation by wall time
    if every_n_epochs is None:  # every val_check_interval batches, across epochs
        batches = int(interval)
    elif interval == float("inf"):
        batches = every_n_epochs * per_epoch
    else:
        batches = (every_n_epochs - 1) * per_epoch + min(int(interval), per_epoch)
    return math.ceil(batches / trainer.accumulate_grad_batches)


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks of ``cfg.callbacks``, a progress bar and a model summary (Rich on a
    terminal, plain otherwise) unless one is configured or disabled, and
    :class:`NoValidationWarning`."""
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node]
    has_summary = any(isinstance(c, ModelSummary) for c in callbacks)
    if (
        not has_summary
        and cfg.trainer.get("enable_model_summary", True)
        and not sys.stdout.isatty()
    ):
        # Lightning's default, a Rich table, is cut to 80 columns in a file: the plain one is not
        callbacks.append(ModelSummary())
    has_bar = any(isinstance(c, L.pytorch.callbacks.ProgressBar) for c in callbacks)
    if not has_bar and cfg.trainer.get("enable_progress_bar", True):
        if sys.stdout.isatty():
            callbacks.append(RunRichProgressBar())
        else:
            callbacks.append(LineProgressBar(refresh_rate=cfg.trainer.get("log_every_n_steps", 10)))
    return [*callbacks, NoValidationWarning()]
