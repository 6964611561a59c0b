"""Causal self-attention, two ways (fused and per-head loop), the KV cache for decoding, and
the masks and positions of padded batches.

Both implementations own exactly the same parameters, ``c_attn`` (the q, k, v projections
stacked into one Linear) and ``c_proj`` (the output projection), and no persistent buffers,
so a state_dict saved from one loads into the other and gives the same outputs.

Padding: an ``attention_mask`` (B, T), 1 for real tokens and 0 for padding, becomes one boolean
(B, 1, T, t_k) mask (:func:`padding_attention_mask`) that both implementations apply, and
positions counted from each row's first real token (:func:`positions_from_mask`). Without an
attention mask nothing of this runs: the plain causal path is today's, kernel for kernel.
"""

import functools
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
        # (B, max_length) bool, True for the real tokens; allocated by the first padded step
        # only, so an unpadded cache does no mask work at all
        self._mask: Tensor | None = None

    @property
    def masked(self) -> bool:
        """Whether the cache holds a padded batch: then every later step needs the key mask."""
        return self._mask is not None

    def extend_mask(self, new: Tensor) -> Tensor:
        """Record the mask (B, T) of the T tokens about to be added at position ``length``;
        return the mask of all the keys they will see (B, length + T).

        Called once per forward pass, before the layers add their keys and values. The tokens
        already cached without a mask were all real.
        """
        start, (B, T) = self.length, new.shape
        if start + T > self.max_length:
            raise ValueError(
                f"KV cache holds {start} tokens, {T} more would exceed its "
                f"max_length={self.max_length}: start a new cache"
            )
        if self._mask is None:
            self._mask = torch.ones(B, self.max_length, dtype=torch.bool, device=new.device)
        self._mask[:, start : start + T] = new
        return self._mask[:, : start + T]

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


def padding_attention_mask(key_mask: Tensor, t_q: int) -> Tensor:
    """Boolean (B, 1, t_q, t_k) mask for the last t_q of the t_k keys (right-aligned, as
    :func:`causal_mask`), True where a query may attend: causal, and never to a padded key.

    A query also always sees its own position, padded or not: a padded query at the start of
    a left-padded row would otherwise see no key at all, and its softmax over nothing gives NaN,
    which the next layer's keys would carry into the real positions. Real queries always see
    their own (real) key anyway, so this changes nothing for them.
    """
    B, t_k = key_mask.shape
    device = key_mask.device
    own = torch.arange(t_k, device=device)[None, :] == (
        torch.arange(t_q, device=device)[:, None] + (t_k - t_q)
    )
    allowed = causal_mask(t_q, t_k, device)[None] & (key_mask[:, None, :] | own[None])
    return allowed[:, None]  # one mask for every head


def real_tokens(idx: Tensor, attention_mask: Tensor | None) -> Tensor:
    """``attention_mask`` (B, T) as booleans, True for real tokens (all of them when None);
    a mask of another shape than idx is a ValueError."""
    if attention_mask is None:
        return torch.ones(idx.shape, dtype=torch.bool, device=idx.device)
    if attention_mask.shape != idx.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but idx has "
            f"{tuple(idx.shape)}: give one 1 (real) or 0 (padding) per token"
        )
    return attention_mask.to(device=idx.device) != 0


def positions_from_mask(key_mask: Tensor, t_q: int) -> Tensor:
    """Positions (B, t_q) of the last t_q tokens, counted from each row's first real token (a
    left-padded row then gets the positions it has alone); padding gets position 0."""
    return (key_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, key_mask.size(1) - t_q :]


@functools.cache
def _cpu_has_amx() -> bool:
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.6
    return bool(capabilities and capabilities().get("amx_bf16"))


def sdpa(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """``F.scaled_dot_product_attention``, computed in float32 for bfloat16 or float16 inputs on
    a CPU without AMX, and returned in the inputs' dtype.

    There PyTorch's CPU flash-attention kernel is slow in low precision: forward + backward at
    the shape of nanoGPT's CPU run (12 x 4 heads x 64 x 32) took 6.7 ms in bfloat16 against
    1.9 ms with the inputs cast to float32, which made bf16-mixed training slower, not faster.
    Float32 is also the more precise of the two.
    """
    low = q.dtype in (torch.bfloat16, torch.float16)
    if low and q.device.type == "cpu" and not _cpu_has_amx():
        with torch.autocast("cpu", enabled=False):  # CPU autocast would cast them back down
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


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

    def forward(
        self,
        x: Tensor,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``attn_mask``: None for plain causal attention, else the (B, 1, T, t_k) boolean mask
        of :func:`padding_attention_mask` (causal structure included)."""
        y = self.attend(x, kv_cache, layer, attn_mask)  # (B, T, C), heads side by side
        return self.resid_dropout(self.c_proj(y))

    def attend(
        self, x: Tensor, kv_cache: KVCache | None, layer: int, attn_mask: Tensor | None
    ) -> Tensor:
        raise NotImplementedError


class FusedCausalSelfAttention(CausalSelfAttention):
    """All heads at once: one qkv matmul and one scaled_dot_product_attention call."""

    def attend(
        self, x: Tensor, kv_cache: KVCache | None, layer: int, attn_mask: Tensor | None
    ) -> Tensor:
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
        if attn_mask is not None:  # a padded batch: the mask holds the causal structure too
            y = sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        elif t_k == T:  # no cache (or an empty one): the plain causal mask
            y = sdpa(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:  # one new token after the cache: it may see every key, no mask needed
            y = sdpa(q, k, v, dropout_p=dropout_p)
        else:  # several new tokens after the cache: is_causal would align top-left, wrongly
            y = sdpa(q, k, v, attn_mask=causal_mask(T, t_k, x.device), dropout_p=dropout_p)
        return y.transpose(1, 2).contiguous().view(B, T, C)


class LoopCausalSelfAttention(CausalSelfAttention):
    """One head at a time, with the attention matrix written out.

    Each head uses its own slice of the same c_attn weight: rows [0, C) of c_attn make q,
    [C, 2C) make k, [2C, 3C) make v, and head h owns rows h*head_dim .. (h+1)*head_dim of each.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        self.attn_dropout = nn.Dropout(config.dropout)

    def attend(
        self, x: Tensor, kv_cache: KVCache | None, layer: int, attn_mask: Tensor | None
    ) -> Tensor:
        B, T, C = x.shape
        hd = self.head_dim
        w = self.c_attn.weight.view(3, self.n_head, hd, C)  # [q|k|v, head, out, in]
        b = None if self.c_attn.bias is None else self.c_attn.bias.view(3, self.n_head, hd)
        past = kv_cache.get(layer) if kv_cache is not None else None
        t_k = T + (0 if past is None else past[0].size(2))
        # additive mask: 0 where allowed, -inf where the key is in the query's future (or,
        # in a padded batch, padding): (T, t_k), or (B, T, t_k) for a padded batch
        allowed = causal_mask(T, t_k, x.device) if attn_mask is None else attn_mask[:, 0]
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(~allowed, float("-inf"))

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
