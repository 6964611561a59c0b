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


def _norm(tensors: list[Tensor], device: torch.device | None = None) -> Tensor:
    """The L2 norm of all of ``tensors`` together (float32; 0 on ``device`` for none), as a
    tensor: no device sync."""
    if not tensors:
        return torch.zeros((), device=device)
    full = [_full(t).float() for t in tensors]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(full)))


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
        # the probe step's values as tensors, read with one .item() (one device sync) at its end
        self._acts: dict[str, list[list[Tensor]]] = {}
        self._grad_norms: Tensor | None = None
        self._clip: tuple[float | None, bool] = (None, True)
        self._before: list[list[Tensor]] | None = None

    # ---------------------------------------------------------------- activations (forward hooks)
    def _add(self, name: str, layer: int, value: Tensor) -> None:
        self._acts[name][layer].append(value)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        blocks = _blocks(pl_module)
        n = len(blocks)
        for layer, block in enumerate(blocks):

            def on_attn_input(module: nn.Module, args: tuple, layer: int = layer) -> None:
                if self._active and torch.is_grad_enabled():
                    with torch.no_grad():
                        self._add("attn_entropy", layer, attention_entropy(module, args[0]))

            def on_block_output(module: nn.Module, args: tuple, out: Tensor, layer=layer) -> None:
                if self._active and torch.is_grad_enabled():
                    with torch.no_grad():
                        self._add("resid_rms", layer, out.float().pow(2).mean().sqrt())

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
            self._acts = {
                name: [[] for _ in range(self._n_layer)] for name in ("attn_entropy", "resid_rms")
            }

    # ---------------------------------------------------------------- gradients and the update
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Gradients are complete here (accumulated, all-reduced) and not yet clipped."""
        if not self._active:
            return
        blocks = _blocks(pl_module)
        in_blocks = {id(p) for p in blocks.parameters()}
        rest = [p for p in pl_module.parameters() if p.grad is not None and id(p) not in in_blocks]
        # per block, the norm of its parameters' gradient norms (one foreach kernel per block);
        # then every parameter outside the blocks: [block0, ..., block n-1, the whole model]
        device = next(pl_module.parameters()).device
        norms = [
            _norm([p.grad for p in block.parameters() if p.grad is not None], device)
            for block in blocks
        ]
        outside = _norm([p.grad for p in rest], device)
        total = torch.stack([*norms, outside]).pow(2).sum().sqrt()
        self._grad_norms = torch.stack([*norms, total])
        clip = trainer.gradient_clip_val
        self._clip = (clip, (trainer.gradient_clip_algorithm or "norm") == "norm")
        self._before = [[_full(p).detach().float().clone() for p in b.parameters()] for b in blocks]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active or trainer.global_step == self._step:
            return  # not probing, or gradients still accumulating
        self._active = False
        n = self._n_layer
        names: list[str] = []
        values: list[Tensor] = []
        if self._grad_norms is not None:
            names += [f"probes/grad_norm/block{layer}" for layer in range(n)] + ["probes/grad_norm"]
            values.append(self._grad_norms)
        if self._before is not None:
            ratios = []
            for block, before in zip(_blocks(pl_module), self._before, strict=True):
                after = [_full(p).detach().float() for p in block.parameters()]
                update = _norm(torch._foreach_sub(after, before))
                ratios.append(update / _norm(before).clamp_min(1e-15))
            names += [f"probes/update_ratio/block{layer}" for layer in range(n)]
            values.append(torch.stack(ratios))
            self._before = None
        for name in ("attn_entropy", "resid_rms"):
            for layer, seen in enumerate(self._acts[name]):
                if seen:  # the mean over the step's micro-batches
                    names.append(f"probes/{name}/block{layer}")
                    values.append(torch.stack(seen).mean().reshape(1))
        read = torch.cat([v.double().reshape(-1) for v in values]).tolist() if values else []
        metrics = dict(zip(names, read, strict=True))
        if self._grad_norms is not None:
            clip, by_norm = self._clip
            grad_norm = metrics["probes/grad_norm"]
            metrics["probes/clipped"] = float(bool(clip) and by_norm and grad_norm > float(clip))
        self._grad_norms, self._acts = None, {}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self.last_metrics = metrics  # the values of the latest probe step (for tests)
