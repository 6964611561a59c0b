"""The GPT model: decoder blocks, the full network, sampling, and size/FLOP accounting.

Parameter names follow nanoGPT (and so Hugging Face's GPT-2): transformer.wte, transformer.wpe,
transformer.h.{i}.ln_1 / attn.c_attn / attn.c_proj / ln_2 / mlp.c_fc / mlp.c_proj,
transformer.ln_f (pre-norm only) and lm_head.
"""

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from llm_scratch.model.attention import KVCache, build_attention
from llm_scratch.model.config import GPTConfig


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One decoder block: causal self-attention then MLP, each with a residual connection."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.pre_norm = config.pre_norm
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = build_attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> Tensor:
        if self.pre_norm:  # GPT-2: normalise the input of each sublayer
            x = x + self.attn(self.ln_1(x), kv_cache, layer)
            x = x + self.mlp(self.ln_2(x))
        else:  # "Attention Is All You Need": normalise after each residual sum
            x = self.ln_1(x + self.attn(x, kv_cache, layer))
            x = self.ln_2(x + self.mlp(x))
        return x


def init_block(block: Block, n_layer: int) -> None:
    """GPT-2 initialisation of one block, in place."""
    for module in block.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    # GPT-2 paper: scale the projections that write into the residual stream by 1/sqrt(N),
    # N = 2 * n_layer residual additions, so the stream's variance does not grow with depth.
    resid_std = 0.02 / math.sqrt(2 * n_layer)
    nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=resid_std)
    nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=resid_std)


def build_blocks(config: GPTConfig) -> list[Block]:
    """n_layer initialised blocks: each drawn on its own ("fresh"), or copies of one ("clone")."""
    if config.layer_init == "clone":
        # torch.nn.TransformerDecoder's way: every layer starts from the same weights
        block = Block(config)
        init_block(block, config.n_layer)
        return [copy.deepcopy(block) for _ in range(config.n_layer)]
    blocks = []
    for _ in range(config.n_layer):
        block = Block(config)
        init_block(block, config.n_layer)
        blocks.append(block)
    return blocks


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.context_length, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(build_blocks(config)),  # already initialised
            )
        )
        if config.pre_norm:  # post-norm blocks already end in a LayerNorm
            self.transformer.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # one matrix both embeds tokens and scores them (Press & Wolf 2017, as GPT-2)
            self.lm_head.weight = self.transformer.wte.weight

        # Initialise what is not inside a block. Not self.apply(...): that would redraw the
        # blocks, and with layer_init="clone" they must stay identical copies.
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=0.02)
        nn.init.normal_(self.transformer.wpe.weight, mean=0.0, std=0.02)
        if not config.tie_weights:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.02)
        if config.pre_norm:
            nn.init.ones_(self.transformer.ln_f.weight)
            if self.transformer.ln_f.bias is not None:
                nn.init.zeros_(self.transformer.ln_f.bias)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, kv_cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, vocab_size) for token ids idx (B, T), and the mean cross-entropy
        against targets (B, T) if given (positions with target -100 are ignored).

        With a kv_cache, idx holds only the new tokens; they are placed after the cached ones.
        """
        logits = self.lm_head(self.hidden_states(idx, kv_cache))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def hidden_states(self, idx: Tensor, kv_cache: KVCache | None = None) -> Tensor:
        """The final hidden states (B, T, n_embd) that the LM head turns into logits."""
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
        B, T = idx.shape
        start = 0 if kv_cache is None else kv_cache.length
        ctx = self.config.context_length
        if start + T > ctx:
            if start == 0:
                raise ValueError(
                    f"input has T={T} tokens but the model's context_length={ctx}: crop the "
                    f"input to its last {ctx} tokens or build the model with a larger "
                    f"context_length"
                )
            raise ValueError(
                f"KV cache holds {start} tokens, {T} more would exceed context_length={ctx}: "
                f"start a new cache from the last {ctx} tokens"
            )
        pos = torch.arange(start, start + T, device=idx.device)  # absolute positions
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, kv_cache, layer)
        if self.config.pre_norm:
            x = self.transformer.ln_f(x)
        return x

    @torch.no_grad()
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
    ) -> Tensor:
        """Extend each prompt in idx (B, T) by up to max_new_tokens tokens; return (B, T + n).

        temperature=0 picks the most likely token (greedy); otherwise tokens are sampled from
        softmax(logits / temperature), optionally restricted to the top_k most likely tokens
        and/or the smallest set whose probability reaches top_p (nucleus sampling). Once a
        sequence emits eos_id it keeps emitting eos_id, and generation stops early (n <
        max_new_tokens) when every sequence has. The model runs in eval mode throughout and
        gets its previous mode back afterwards.
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

        was_training = self.training
        self.eval()
        try:
            return self._generate(
                idx, max_new_tokens, temperature, top_k, top_p, eos_id, use_cache, generator
            )
        finally:
            self.train(was_training)

    def _generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        eos_id: int | None,
        use_cache: bool,
        generator: torch.Generator | None,
    ) -> Tensor:
        ctx = self.config.context_length
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        cache: KVCache | None = None
        for _ in range(max_new_tokens):
            if not use_cache:
                hidden = self.hidden_states(idx[:, -ctx:])  # crop to the context window
            elif cache is None or cache.length >= ctx:
                # (Re)fill the cache from the last ctx tokens. Positions are learned and
                # absolute, so once the window slides every cached key/value was computed at
                # the wrong position and the cache cannot simply drop its oldest entry: we
                # re-run the whole cropped window. That keeps the result exactly what the
                # uncached path computes; past context_length it just stops saving work.
                cache = KVCache(self.config.n_layer, ctx)
                hidden = self.hidden_states(idx[:, -ctx:], kv_cache=cache)
            else:  # feed only the newest token, at position cache.length
                hidden = self.hidden_states(idx[:, -1:], kv_cache=cache)

            # Only the last position's logits are needed: one row of the LM head, not T.
            logits = self.lm_head(hidden[:, -1, :])
            next_id = self._pick(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
                finished |= next_id == eos_id
            idx = torch.cat([idx, next_id[:, None]], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        return idx

    @staticmethod
    def _pick(
        logits: Tensor,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Choose one token id per row of logits (B, vocab) -> (B,)."""
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

    @classmethod
    def from_hf(cls, source, **overrides) -> "GPT":
        """A GPT with the weights of a Hugging Face GPT-2 checkpoint: a ``save_pretrained``
        directory, a hub name such as ``"gpt2"`` (online), or a ``GPT2LMHeadModel``.
        ``overrides``: dropout, attention, layer_init, context_length (<= n_positions).
        Needs ``transformers`` (``pip install -e ".[hf]"``); see llm_scratch/model/hf.py."""
        from llm_scratch.model.hf import from_hf

        return from_hf(source, **overrides)

    def save_hf(self, directory) -> None:
        """Write this GPT as a Hugging Face GPT-2 directory (``GPT2LMHeadModel.from_pretrained``
        loads it with the same logits). ValueError for post-norm or bias-free models (bias=False
        or qkv_bias=False)."""
        from llm_scratch.model.hf import save_hf

        save_hf(self, directory)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters, a tied matrix counted once (as model.parameters() does).

        non_embedding=True leaves out the position embeddings, as nanoGPT does; the token
        embeddings stay in because (when tied) they are also the output layer's weights.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
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
