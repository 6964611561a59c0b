"""What every model of ours offers, written once: sampling, parameter counts, FLOPs, AdamW groups.

Our :class:`~llm_scratch.model.gpt.GPT` and the Hugging Face backend
(:class:`~llm_scratch.model.hf_backend.HFGPT2`) both derive from :class:`LanguageModel` and
implement its small public interface: ``config`` (``vocab_size``, ``context_length``,
``n_layer``, ``n_embd``), ``hidden_states(idx, kv_cache=None, attention_mask=None)``,
``lm_head`` and ``position_embedding``. Everything here is written in terms of those.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from llm_scratch.model.attention import KVCache, real_tokens


class LanguageModel(nn.Module):
    """A causal language model: ``forward(idx, targets) -> (logits, loss)`` plus the shared parts.

    Subclasses set ``config`` and implement :meth:`forward`, :meth:`hidden_states`,
    :attr:`lm_head` and :attr:`position_embedding`; ``supports_kv_cache`` says whether
    ``hidden_states`` takes a :class:`KVCache` (without one, generation re-runs the window).
    """

    config: Any
    supports_kv_cache: bool = True
    # Also required, as a submodule or property (not declared here: a property on this class
    # would hide the submodule nn.Module registers): ``lm_head``, the layer that turns hidden
    # states into logits, and ``position_embedding``, the learned position table that
    # num_params(non_embedding=True) leaves out.

    def hidden_states(
        self,
        idx: Tensor,
        kv_cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """The final hidden states (B, T, n_embd) that the LM head turns into logits;
        ``attention_mask`` (B, T) marks real tokens 1 and padding 0 (see GPT.forward)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------- sampling
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Extend each prompt in idx (B, T) by up to max_new_tokens tokens; return (B, T + n).

        Prompts of different lengths go in one batch left-padded, with ``attention_mask`` (B, T)
        1 for real tokens and 0 for the padding before them: padding is never attended to and
        positions count from each row's first real token, so greedy decoding gives every row the
        tokens its prompt gets alone. The new tokens are all real.

        temperature=0 picks the most likely token (greedy); otherwise tokens are sampled from
        softmax(logits / temperature), optionally restricted to the top_k most likely tokens
        and/or the smallest set whose probability reaches top_p (nucleus sampling). Once a
        sequence emits eos_id it keeps emitting eos_id, and generation stops early (n <
        max_new_tokens) when every sequence has. The model runs in eval mode throughout and
        gets its previous mode back afterwards. ``use_cache`` is ignored by a model without
        KV-cache support.
        """
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(
                f"idx must have shape (batch, time) with time >= 1, got {tuple(idx.shape)}"
            )
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1 (or None for no top-k filtering)")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p={top_p} must satisfy 0 < top_p <= 1 (or be None)")
        if eos_id is not None and not 0 <= eos_id < self.config.vocab_size:
            raise ValueError(f"eos_id={eos_id} is not a token id in [0, {self.config.vocab_size})")
        if attention_mask is not None:
            attention_mask = real_tokens(idx, attention_mask)
            # new tokens follow each row's last token: a padded last token would be continued
            if not bool(attention_mask[:, -1].all()):
                raise ValueError(
                    "attention_mask pads a prompt at its end: pad on the left, so that every "
                    "row's last token is real"
                )

        was_training = self.training
        self.eval()
        try:
            use_cache = use_cache and self.supports_kv_cache
            # inference_mode rather than no_grad: no autograd bookkeeping at all, which at one
            # token a step is a measurable share of each small operation's cost
            with torch.inference_mode():
                out = self._sample_loop(
                    idx,
                    max_new_tokens,
                    temperature,
                    top_k,
                    top_p,
                    eos_id,
                    use_cache,
                    generator,
                    attention_mask,
                )
            return out.clone()  # an ordinary tensor (an inference tensor is refused by autograd)
        finally:
            self.train(was_training)

    def _sample_loop(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        eos_id: int | None,
        use_cache: bool,
        generator: torch.Generator | None,
        mask: Tensor | None,
    ) -> Tensor:
        ctx = self.config.context_length
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        cache: KVCache | None = None
        # A left-padded row cropped to the last ctx tokens is its own last ctx tokens, or all of
        # it after some padding: the crop below means for each row what it means alone.
        for _ in range(max_new_tokens):
            window_mask = None if mask is None else mask[:, -ctx:]
            if not use_cache:  # crop to the context window
                hidden = self.hidden_states(idx[:, -ctx:], attention_mask=window_mask)
            elif cache is None or cache.length >= ctx:
                # (Re)fill the cache from the last ctx tokens. Positions are learned and
                # absolute, so once the window slides every cached key/value was computed at
                # the wrong position and the cache cannot simply drop its oldest entry: we
                # re-run the whole cropped window. That keeps the result exactly what the
                # uncached path computes; past context_length it just stops saving work.
                cache = KVCache(self.config.n_layer, ctx)
                hidden = self.hidden_states(
                    idx[:, -ctx:], kv_cache=cache, attention_mask=window_mask
                )
            else:  # feed only the newest token (the cache knows any padding before it)
                hidden = self.hidden_states(idx[:, -1:], kv_cache=cache)

            # Only the last position's logits are needed: one row of the LM head, not T.
            logits = self.lm_head(hidden[:, -1, :])
            next_id = pick_next_token(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
                finished |= next_id == eos_id
            idx = torch.cat([idx, next_id[:, None]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        return idx

    # ------------------------------------------------------------------------------- accounting
    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters, a tied matrix counted once (as model.parameters() does).

        non_embedding=True leaves out the position embeddings, as nanoGPT does; the token
        embeddings stay in because (when tied) they are also the output layer's weights.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.position_embedding.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Estimated training FLOPs per token (forward + backward), nanoGPT's estimate_mfu.

        6N for the weight matmuls (2 FLOPs per multiply-add, forward 1x + backward 2x) with
        N = num_params(non_embedding=True), plus 12 * n_layer * n_embd * context_length for
        the attention scores and weighted sums (PaLM paper, appendix B), at full context.
        """
        cfg = self.config
        n = self.num_params(non_embedding=True)
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.context_length

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s as a fraction of peak_flops.

        peak_flops is the hardware's peak in FLOP/s for the dtype used (A100 bf16: 312e12).
        """
        if peak_flops <= 0:
            raise ValueError(f"peak_flops={peak_flops} must be > 0 (FLOP/s of the hardware)")
        return self.flops_per_token() * tokens_per_second / peak_flops

    def optimizer_param_groups(self, weight_decay: float) -> list[dict]:
        """Two AdamW parameter groups: weight decay on every tensor with >= 2 dims (matmul
        weights and embeddings), none on biases and LayerNorm gains (nanoGPT's rule)."""
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0")
        params = [p for p in self.parameters() if p.requires_grad]  # tied weight listed once
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


def pick_next_token(
    logits: Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Choose one token id per row of logits (B, vocab) -> (B,): greedy at temperature 0, else
    sampled after top-k and top-p (nucleus) filtering."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the more likely ones already reach top_p; the first always stays
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
