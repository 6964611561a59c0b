"""Training-health probes: per-block gradient norms, update sizes, residual-stream RMS and
attention entropy every N optimizer steps, to see why an ablation's curves differ.

Logged as ``probes/<name>/block<i>`` (and ``probes/grad_norm``, ``probes/clipped``) straight to the
run's loggers at the step they describe. Nothing here changes what is trained: the probes read
weights, gradients and activations without touching the random state, so a run's losses are the
same with the probes on and off.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from llm_scratch.errors import UserError

# what one probe step logs per block, in the order the report draws them
BLOCK_PROBES = ("grad_norm", "update_ratio", "resid_rms", "attn_entropy")


def _blocks(pl_module: L.LightningModule) -> nn.ModuleList:
    model = getattr(pl_module, "model", None)
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    first = blocks[0] if isinstance(blocks, nn.ModuleList) and len(blocks) else None
    if first is None or not hasattr(getattr(first, "attn", None), "n_head"):
        raise UserError(
            "callbacks.training_probes needs one of the package's own GPT models (model=<preset>), "
            "not model=hf_gpt2; remove it with ~callbacks.training_probes."
        )
    return blocks


def _full(t: Tensor) -> Tensor:
    """A sharded (FSDP2 DTensor) parameter or gradient as the whole tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def attention_entropy(attn: nn.Module, x: Tensor) -> Tensor:
    """Mean entropy (nats) of the causal attention weights ``attn`` computes for input ``x``
    (B, T, C), over the batch, heads and query positions; the same for the fused and the loop
    implementations, which share ``c_attn``."""
    B, T, C = x.shape
    q, k, _ = attn.c_attn(x).split(attn.n_embd, dim=2)
    q = q.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)
    k = k.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(attn.head_dim)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    logp = torch.log_softmax(scores.float().masked_fill(future, float("-inf")), dim=-1)
    # masked entries have p = 0 and log p = -inf: count them as 0, not nan
    plogp = torch.where(future, torch.zeros_like(logp), logp.exp() * logp)
    return -plogp.sum(-1).mean()


class TrainingProbes(L.Callback):
    """Every ``every_n_steps`` optimizer steps, log per decoder block: the gradient norm of the
    block's parameters, RMS(update) / RMS(weights) of the optimizer step, the RMS of the block's
    output (the residual stream) and the mean attention entropy; and the global gradient norm
    before clipping and whether clipping fired (``probes/clipped``: 1 or 0)."""

    def __init__(self, every_n_steps: int = 10) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int):
            raise UserError(
                f"callbacks.training_probes.every_n_steps={every_n_steps!r}: give an integer >= 1."
            )
        if every_n_steps < 1:
            raise UserError(
                f"callbacks.training_probes.every_n_steps={every_n_steps} is out of range: it "
                "must be an integer >= 1."
            )
        self.every_n_steps = every_n_steps
        self._hooks: list[Any] = []
        self._active = False
        self._sums: dict[str, list[float]] = {}
        self._counts: dict[str, list[int]] = {}
        self._before: list[list[Tensor]] | None = None
        self._metrics: dict[str, float] = {}

    # ---------------------------------------------------------------- activations (forward hooks)
    def _add(self, name: str, layer: int, value: float) -> None:
        self._sums[name][layer] += value
        self._counts[name][layer] += 1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        blocks = _blocks(pl_module)
        n = len(blocks)
        for layer, block in enumerate(blocks):

            def on_attn_input(module: nn.Module, args: tuple, layer: int = layer) -> None:
                if self._active and torch.is_grad_enabled():
                    with torch.no_grad():
                        self._add("attn_entropy", layer, attention_entropy(module, args[0]).item())

            def on_block_output(module: nn.Module, args: tuple, out: Tensor, layer=layer) -> None:
                if self._active and torch.is_grad_enabled():
                    with torch.no_grad():
                        self._add("resid_rms", layer, out.float().pow(2).mean().sqrt().item())

            self._hooks.append(block.attn.register_forward_pre_hook(on_attn_input))
            self._hooks.append(block.register_forward_hook(on_block_output))
        self._n_layer = n

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, error) -> None:
        self.on_fit_end(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # probe the optimizer step that makes the steps done a multiple of every_n_steps (the
        # loggers' rows carry the steps done, as train/loss's)
        if not self._active and (trainer.global_step + 1) % self.every_n_steps == 0:
            self._active = True
            self._step = trainer.global_step
            self._sums = {name: [0.0] * self._n_layer for name in ("attn_entropy", "resid_rms")}
            self._counts = {name: [0] * self._n_layer for name in ("attn_entropy", "resid_rms")}

    # ---------------------------------------------------------------- gradients and the update
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Gradients are complete here (accumulated, all-reduced) and not yet clipped."""
        if not self._active:
            return
        total = 0.0
        metrics: dict[str, float] = {}
        blocks = _blocks(pl_module)
        in_blocks = {id(p) for p in blocks.parameters()}
        for layer, block in enumerate(blocks):
            squares = sum(
                _full(p.grad).float().pow(2).sum().item()
                for p in block.parameters()
                if p.grad is not None
            )
            metrics[f"probes/grad_norm/block{layer}"] = math.sqrt(squares)
            total += squares
        for p in pl_module.parameters():
            if p.grad is not None and id(p) not in in_blocks:
                total += _full(p.grad).float().pow(2).sum().item()
        grad_norm = math.sqrt(total)
        metrics["probes/grad_norm"] = grad_norm
        clip = trainer.gradient_clip_val
        by_norm = (trainer.gradient_clip_algorithm or "norm") == "norm"
        metrics["probes/clipped"] = float(bool(clip) and by_norm and grad_norm > float(clip))
        self._metrics = metrics
        self._before = [[_full(p).detach().float().clone() for p in b.parameters()] for b in blocks]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active or trainer.global_step == self._step:
            return  # not probing, or gradients still accumulating
        self._active = False
        metrics = self._metrics
        if self._before is not None:
            for layer, (block, before) in enumerate(
                zip(_blocks(pl_module), self._before, strict=True)
            ):
                after = [_full(p).detach().float() for p in block.parameters()]
                update = sum(
                    (a - b).pow(2).sum().item() for a, b in zip(after, before, strict=True)
                )
                weight = sum(b.pow(2).sum().item() for b in before)
                metrics[f"probes/update_ratio/block{layer}"] = math.sqrt(
                    update / max(weight, 1e-30)
                )
            self._before = None
        for name in ("attn_entropy", "resid_rms"):
            for layer in range(self._n_layer):
                if self._counts[name][layer]:
                    value = self._sums[name][layer] / self._counts[name][layer]
                    metrics[f"probes/{name}/block{layer}"] = value
        self._metrics = {}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self.last_metrics = metrics  # the values of the latest probe step (for tests)
