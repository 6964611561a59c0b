"""The GPT model: decoder blocks and the full network (sampling and size/FLOP accounting are
shared with the HF backend in base.py).

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

from llm_scratch.model import hf
from llm_scratch.model.attention import (
    KVCache,
    build_attention,
    padding_attention_mask,
    positions_from_mask,
    real_tokens,
)
from llm_scratch.model.base import LanguageModel
from llm_scratch.model.config import GPTConfig


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 used the tanh approximation; nanoGPT the exact erf form (2x faster on a CPU)
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
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

    def forward(
        self,
        x: Tensor,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        if self.pre_norm:  # GPT-2: normalise the input of each sublayer
            x = x + self.attn(self.ln_1(x), kv_cache, layer, attn_mask)
            x = x + self.mlp(self.ln_2(x))
        else:  # "Attention Is All You Need": normalise after each residual sum
            x = self.ln_1(x + self.attn(x, kv_cache, layer, attn_mask))
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
    """n_layer initialised blocks: each drawn on its own ("fresh"), or copies of one ("clone");
    with GPT-2's initialisation, or as PyTorch's layers initialise themselves."""

    def new_block() -> Block:
        block = Block(config)
        if config.weight_init == "gpt2":
            init_block(block, config.n_layer)
        return block

    if config.layer_init == "clone":
        # torch.nn.TransformerDecoder's way: every layer starts from the same weights
        block = new_block()
        return [copy.deepcopy(block) for _ in range(config.n_layer)]
    return [new_block() for _ in range(config.n_layer)]


class GPT(LanguageModel):
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

        if config.weight_init == "gpt2":
            self._init_outside_blocks()

    def _init_outside_blocks(self) -> None:
        """GPT-2's initialisation of the embeddings, the head and the final LayerNorm. Not
        self.apply(...): that would redraw the blocks, and with layer_init="clone" they must
        stay identical copies."""
        config = self.config
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=0.02)
        nn.init.normal_(self.transformer.wpe.weight, mean=0.0, std=0.02)
        if not config.tie_weights:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.02)
        if config.pre_norm:
            nn.init.ones_(self.transformer.ln_f.weight)
            if self.transformer.ln_f.bias is not None:
                nn.init.zeros_(self.transformer.ln_f.bias)

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, vocab_size) for token ids idx (B, T), and the mean cross-entropy
        against targets (B, T) if given (positions with target -100 are ignored; give padding
        the target -100).

        ``attention_mask`` (B, T): 1 for real tokens, 0 for padding. Padded positions are never
        attended to, and each row's positions count from its first real token, so a padded
        row's logits at its real positions are those of the row alone. With a kv_cache, idx
        (and the mask) hold only the new tokens; they are placed after the cached ones.
        """
        logits = self.lm_head(self.hidden_states(idx, kv_cache, attention_mask))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def hidden_states(
        self,
        idx: Tensor,
        kv_cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
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
        attn_mask = None
        if attention_mask is None and (kv_cache is None or not kv_cache.masked):
            pos = torch.arange(start, start + T, device=idx.device)  # absolute positions
        else:  # a padded batch: one mask for every layer, positions per row
            key_mask = real_tokens(idx, attention_mask)
            if kv_cache is not None:  # the cached keys' mask, then these tokens'
                key_mask = kv_cache.extend_mask(key_mask)
            pos = positions_from_mask(key_mask, T)  # (B, T)
            attn_mask = padding_attention_mask(key_mask, T)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, kv_cache, layer, attn_mask)
        if self.config.pre_norm:
            x = self.transformer.ln_f(x)
        return x

    @property
    def position_embedding(self) -> nn.Embedding:
        return self.transformer.wpe

    @classmethod
    def from_hf(cls, source, **overrides) -> "GPT":
        """A GPT with the weights of a Hugging Face GPT-2 checkpoint: a ``save_pretrained``
        directory, a hub name such as ``"gpt2"`` (online), or a ``GPT2LMHeadModel``.
        ``overrides``: dropout, attention, layer_init, context_length (<= n_positions).
        Needs ``transformers`` (``pip install -e ".[hf]"``); see llm_scratch/model/hf.py."""
        config, state = hf.hf_weights(source, **overrides)
        model = cls(config)
        model.load_state_dict(state, strict=True)
        return model

    def save_hf(self, directory) -> None:
        """Write this GPT as a Hugging Face GPT-2 directory (``GPT2LMHeadModel.from_pretrained``
        loads it with the same logits). ValueError for post-norm or bias-free models (bias=False
        or qkv_bias=False)."""
        hf.save_hf(self, directory)
