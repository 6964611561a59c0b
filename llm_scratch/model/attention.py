"""Causal self-attention, two ways (fused and per-head loop), and the KV cache for decoding.

Both implementations own exactly the same parameters, ``c_attn`` (the q, k, v projections
stacked into one Linear) and ``c_proj`` (the output projection), and no persistent buffers,
so a state_dict saved from one loads into the other and gives the same outputs.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from llm_scratch.model.config import GPTConfig


class KVCache:
    """Keys and values of the tokens seen so far, one (k, v) pair per layer.

    Each layer's keys and values live in a buffer allocated once, on the first update, for
    ``max_length`` tokens (B, n_head, max_length, head_dim); a step writes its new entries in
    place and attention reads a view of the filled part. Growing the tensors with torch.cat
    instead would copy the whole cache at every generated token. ``length`` is the number of
    tokens in the cache, which is also the position of the next token fed to the model.
    """

    def __init__(self, n_layer: int, max_length: int) -> None:
        if max_length < 1:
            raise ValueError(f"max_length={max_length} must be >= 1")
        self.max_length = max_length
        self._keys: list[Tensor | None] = [None] * n_layer
        self._values: list[Tensor | None] = [None] * n_layer
        self._lengths = [0] * n_layer

    @property
    def length(self) -> int:
        # Every layer sees the same tokens; read the length off the first one. The model
        # reads it once before its blocks run, since layer 0 grows it first.
        return self._lengths[0]

    def get(self, layer: int) -> tuple[Tensor, Tensor] | None:
        """This layer's cached (keys, values), each (B, n_head, length, head_dim), or None."""
        k, v, n = self._keys[layer], self._values[layer], self._lengths[layer]
        return None if k is None or v is None or n == 0 else (k[:, :, :n], v[:, :, :n])

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this step's keys/values for ``layer``; return all of them (past + new)."""
        start = self._lengths[layer]
        end = start + k.size(2)
        if end > self.max_length:
            raise ValueError(
                f"KV cache holds {start} tokens, {k.size(2)} more would exceed its "
                f"max_length={self.max_length}: start a new cache"
            )
        if self._keys[layer] is None:
            B, H, _, D = k.shape
            self._keys[layer] = k.new_empty(B, H, self.max_length, D)
            self._values[layer] = v.new_empty(B, H, self.max_length, v.size(3))
        keys, values = self._keys[layer], self._values[layer]
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        self._lengths[layer] = end
        return keys[:, :, :end], values[:, :, :end]


def causal_mask(t_q: int, t_k: int, device: torch.device | None = None) -> Tensor:
    """Boolean (t_q, t_k) mask, True where a query may attend to a key.

    Queries are the last t_q of the t_k positions (right-aligned), so query i sits at
    absolute position t_k - t_q + i and sees keys 0 .. t_k - t_q + i.
    """
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


class CausalSelfAttention(nn.Module):
    """Parameters and output projection shared by both implementations."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.attn_qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> Tensor:
        y = self.attend(x, kv_cache, layer)  # (B, T, C), heads side by side
        return self.resid_dropout(self.c_proj(y))

    def attend(self, x: Tensor, kv_cache: KVCache | None, layer: int) -> Tensor:
        raise NotImplementedError


class FusedCausalSelfAttention(CausalSelfAttention):
    """All heads at once: one qkv matmul and one scaled_dot_product_attention call."""

    def attend(self, x: Tensor, kv_cache: KVCache | None, layer: int) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim): heads become a batch dimension
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)
        t_k = k.size(2)
        dropout_p = self.dropout if self.training else 0.0
        if t_k == T:  # no cache (or an empty one): the plain causal mask
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:  # one new token after the cache: it may see every key, no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:  # several new tokens after the cache: is_causal would align top-left, wrongly
            mask = causal_mask(T, t_k, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return y.transpose(1, 2).contiguous().view(B, T, C)


class LoopCausalSelfAttention(CausalSelfAttention):
    """One head at a time, with the attention matrix written out.

    Each head uses its own slice of the same c_attn weight: rows [0, C) of c_attn make q,
    [C, 2C) make k, [2C, 3C) make v, and head h owns rows h*head_dim .. (h+1)*head_dim of each.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        self.attn_dropout = nn.Dropout(config.dropout)

    def attend(self, x: Tensor, kv_cache: KVCache | None, layer: int) -> Tensor:
        B, T, C = x.shape
        hd = self.head_dim
        w = self.c_attn.weight.view(3, self.n_head, hd, C)  # [q|k|v, head, out, in]
        b = None if self.c_attn.bias is None else self.c_attn.bias.view(3, self.n_head, hd)
        past = kv_cache.get(layer) if kv_cache is not None else None
        t_k = T + (0 if past is None else past[0].size(2))
        # additive mask: 0 where allowed, -inf where the key is in the query's future
        mask = torch.zeros(T, t_k, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(~causal_mask(T, t_k, x.device), float("-inf"))

        heads, new_k, new_v = [], [], []
        for h in range(self.n_head):
            q = F.linear(x, w[0, h], None if b is None else b[0, h])  # (B, T, hd)
            k = F.linear(x, w[1, h], None if b is None else b[1, h])
            v = F.linear(x, w[2, h], None if b is None else b[2, h])
            new_k.append(k)
            new_v.append(v)
            if past is not None:  # prepend this head's cached keys/values
                k = torch.cat([past[0][:, h], k], dim=1)
                v = torch.cat([past[1][:, h], v], dim=1)
            att = q @ k.transpose(-2, -1) / math.sqrt(hd) + mask  # (B, T, t_k)
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            heads.append(att @ v)  # (B, T, hd)

        if kv_cache is not None:  # same (B, n_head, T, hd) layout as the fused version
            kv_cache.update(layer, torch.stack(new_k, dim=1), torch.stack(new_v, dim=1))
        return torch.cat(heads, dim=-1)


def build_attention(config: GPTConfig) -> CausalSelfAttention:
    if config.attention == "fused":
        return FusedCausalSelfAttention(config)
    return LoopCausalSelfAttention(config)
