"""Callbacks: text samples at each validation, throughput and MFU, plain progress lines."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from llm_scratch.sample import sample_texts
from llm_scratch.utils.flops import known_peak_flops

log = logging.getLogger(__name__)


class TextSampler(L.Callback):
    """Generates a short sample from a fixed prompt at the end of each validation.

    The sample is appended to ``<output_dir>/samples.jsonl``, printed to the log, and sent to
    W&B or TensorBoard when those loggers are active. ``prompt=None`` takes the data module's
    default prompt ("Every effort moves you" for The Verdict).
    """

    def __init__(
        self,
        output_dir: str,
        prompt: str | None = None,
        max_new_tokens: int = 50,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 1234,
    ) -> None:
        self.path = Path(output_dir) / "samples.jsonl"
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        tokenizer = datamodule.tokenizer
        prompt = self.prompt if self.prompt is not None else datamodule.default_prompt
        text = self.sample(pl_module, tokenizer, prompt)
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step, "text": text}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        log.info("sample at step %d: %r", trainer.global_step, text)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text("samples", columns=["step", "text"], data=[[record["step"], text]])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", text, global_step=trainer.global_step)

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


class ThroughputLogger(L.Callback):
    """Logs tokens seen, tokens per second and, where a peak is known, model FLOPs utilisation.

    Timing is read every ``log_every_n_steps`` optimizer steps, so nothing forces a device sync
    per step. ``peak_flops`` is the device's peak FLOP/s for the training dtype (for all
    processes together it is multiplied by the world size); ``None`` uses Lightning's table of
    known GPUs, and on a CPU gives no MFU unless configured (``bench`` measures a CPU peak).
    """

    def __init__(self, log_every_n_steps: int = 10, peak_flops: float | None = None) -> None:
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
        tokens = batch[1].numel() * trainer.world_size  # every micro-batch's tokens count
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
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        self._print(f"training: {self.total_train_batches} batches per epoch, {total} steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.refresh_rate == 0 or batch_idx + 1 == self.total_train_batches:
            elapsed = time.perf_counter() - self._start
            metrics = self._format(self.get_metrics(trainer, pl_module))
            self._print(
                f"epoch {trainer.current_epoch} step {trainer.global_step} "
                f"batch {batch_idx + 1}/{self.total_train_batches} [{elapsed:.0f}s]  {metrics}"
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        shown = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
        self._print(f"validation at step {trainer.global_step}: {self._format(shown)}")
