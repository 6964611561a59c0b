"""Hugging Face GPT-2 in the training loop: ``model=hf_gpt2`` and ``init_from=<GPT-2 checkpoint>``.

``model=hf_gpt2`` trains ``transformers.GPT2LMHeadModel``, built from scratch from a
``GPT2Config``, through the same data, LightningModule, trainer and callbacks as our GPT: the
:class:`HFGPT2` adapter gives it our model's interface (``forward(idx, targets) -> (logits,
loss)``, ``generate``, ``num_params``, ``flops_per_token``, ``optimizer_param_groups``).

Labels. The data gives ``(x, y)`` with ``y`` = ``x`` shifted left by one token, while
``GPT2LMHeadModel(input_ids, labels=...)`` shifts its labels itself. ``label_shift="single"``
(the correct way) feeds ``input_ids=x`` only and takes the cross-entropy of the logits against
``y`` here, over all T positions: exactly our GPT's loss (with ``labels=x`` HF would shift once
and score only T-1 positions). ``label_shift="double"`` reproduces the common mistake of passing
the already shifted ``y`` as ``labels``: HF shifts again, and the model learns to predict the
token two ahead (over T-1 positions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from llm_scratch.errors import UserError
from llm_scratch.model import GPT, GPTConfig
from llm_scratch.model.hf import (
    FREE_FIELDS,
    gpt2_config,
    gpt_config_from_hf,
    load_hf_config,
    require_transformers,
)
from llm_scratch.model_factory import HF_BACKEND
from llm_scratch.model_factory import build_model as build_model  # its former home: re-exported

log = logging.getLogger(__name__)

LABEL_SHIFTS = ("single", "double")
_GPT_FIELDS = {f.name for f in fields(GPTConfig)}


@dataclass
class HFGPT2Config:
    """A ``transformers.GPT2Config`` in our field names (pre-norm, biases, gelu_new, as GPT-2).

    ``backend`` marks the dict in checkpoints' hyperparameters; it is not set by hand.
    """

    vocab_size: int = 50257
    context_length: int = 1024  # GPT-2's n_positions
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.1  # resid_pdrop, embd_pdrop and attn_pdrop
    tie_weights: bool = True  # tie_word_embeddings
    label_shift: str = "single"  # "single": labels handled correctly; "double": shifted twice
    backend: str = HF_BACKEND

    def __post_init__(self) -> None:
        try:  # the shared fields obey GPTConfig's rules
            GPTConfig(**{k: v for k, v in self.__dict__.items() if k in _GPT_FIELDS})
        except ValueError as error:
            raise ValueError(str(error).replace("GPTConfig.", "HFGPT2Config.")) from None
        if self.label_shift not in LABEL_SHIFTS:
            raise ValueError(
                f"HFGPT2Config.label_shift={self.label_shift!r} is not a known choice: use "
                f"'single' (correct) or 'double' (the double-shift mistake)"
            )
        if self.backend != HF_BACKEND:
            raise ValueError(f"HFGPT2Config.backend={self.backend!r} must be {HF_BACKEND!r}")

    def to_hf(self):
        return gpt2_config(
            vocab_size=self.vocab_size,
            context_length=self.context_length,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            dropout=self.dropout,
            tie_weights=self.tie_weights,
            use_cache=False,
        )


class HFGPT2(nn.Module):
    """``transformers.GPT2LMHeadModel`` (in ``self.hf``) behind our GPT's interface."""

    def __init__(self, config: HFGPT2Config) -> None:
        super().__init__()
        transformers = require_transformers()
        self.config = config
        self.hf = transformers.GPT2LMHeadModel(config.to_hf())  # GPT-2's own initialisation

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if self.config.label_shift == "double" and targets is not None:
            # The mistake: targets are already x shifted by one, and HF shifts them again, so
            # logits[:, t] is scored against x[:, t + 2].
            out = self.hf(input_ids=idx, labels=targets, use_cache=False)
            return out.logits, out.loss
        logits = self.hf(input_ids=idx, use_cache=False).logits
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
            )
        return logits, loss

    def generate(self, idx: Tensor, max_new_tokens: int, **kwargs: Any) -> Tensor:
        """As :meth:`GPT.generate` (the same sampling code), without a KV cache."""
        kwargs["use_cache"] = False
        return GPT.generate(self, idx, max_new_tokens, **kwargs)

    def hidden_states(self, idx: Tensor, kv_cache: None = None) -> Tensor:
        """The final hidden states (after ln_f), as :meth:`GPT.hidden_states`."""
        return self.hf.transformer(input_ids=idx, use_cache=False).last_hidden_state

    @property
    def lm_head(self) -> nn.Module:
        return self.hf.lm_head

    # GPT's sampling loop and parameter rules only use hidden_states(), lm_head, config and
    # parameters().
    _generate = GPT._generate
    _pick = staticmethod(GPT._pick)
    optimizer_param_groups = GPT.optimizer_param_groups
    flops_per_token = GPT.flops_per_token
    estimate_mfu = GPT.estimate_mfu

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied matrix counted once
        if non_embedding:
            n -= self.hf.transformer.wpe.weight.numel()
        return n


def init_from_model_config(
    model_cfg: dict[str, Any], init_from: str, vocab_size: int, context_length: int
) -> GPTConfig:
    """The GPTConfig for fine-tuning from the GPT-2 checkpoint ``init_from``.

    The architecture (n_layer, n_head, n_embd, vocab_size, tied head, pre-norm, biases) is the
    checkpoint's, whatever ``model.*`` says; ``model.dropout`` and ``model.attention`` are
    the user's; the context is ``data.context_length`` (at most the checkpoint's n_positions).
    """
    if model_cfg.get("backend") == HF_BACKEND:
        raise UserError(
            "init_from loads GPT-2 weights into our GPT; it does not combine with model=hf_gpt2 "
            "(use a GPT model config, e.g. model=gpt2)"
        )
    try:
        hf_config = load_hf_config(init_from)
    except (ImportError, ValueError) as error:
        raise UserError(f"init_from={init_from}: {error}") from error
    if vocab_size != hf_config.vocab_size:
        raise UserError(
            f"init_from={init_from} has a {hf_config.vocab_size}-token vocabulary but the data's "
            f"tokenizer has {vocab_size} tokens: fine-tune on GPT-2 BPE data "
            "(data.tokenizer=gpt2, e.g. data=shakespeare_bpe)"
        )
    free = {k: model_cfg[k] for k in FREE_FIELDS if k in model_cfg and k != "context_length"}
    try:
        config = gpt_config_from_hf(hf_config, context_length=context_length, **free)
    except ValueError as error:
        raise UserError(f"init_from={init_from}: {error}") from error
    ignored = {
        k: model_cfg[k]
        for k in ("n_layer", "n_head", "n_embd", "bias", "pre_norm", "tie_weights")
        if k in model_cfg and model_cfg[k] != getattr(config, k)
    }
    # qkv_bias=null means "as bias": only an explicit value that GPT-2 does not have is ignored
    if model_cfg.get("qkv_bias") is not None and model_cfg["qkv_bias"] != config.attn_qkv_bias:
        ignored["qkv_bias"] = model_cfg["qkv_bias"]
    if ignored:
        log.warning(
            "init_from=%s: the architecture is the checkpoint's; ignoring model.%s",
            init_from,
            ", model.".join(f"{k}={v}" for k, v in ignored.items()),
        )
    return config


def load_initial_weights(model: nn.Module, init_from: str) -> None:
    """Copy the GPT-2 checkpoint ``init_from`` into ``model`` (our GPT), as a UserError on failure."""
    from llm_scratch.model.hf import load_hf_weights

    if not isinstance(model, GPT):
        raise UserError("init_from needs our GPT model, not the hf_gpt2 backend")
    try:
        load_hf_weights(model, init_from)
    except (ImportError, ValueError) as error:
        raise UserError(f"init_from={init_from}: {error}") from error
    log.info("initial weights from the GPT-2 checkpoint %s", init_from)
