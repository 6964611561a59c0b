"""Hugging Face GPT-2 as a model of ours: ``model=hf_gpt2`` trains ``GPT2LMHeadModel``.

It trains ``transformers.GPT2LMHeadModel``, built from scratch from a
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

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from llm_scratch.model.attention import positions_from_mask, real_tokens
from llm_scratch.model.base import LanguageModel
from llm_scratch.model.config import HF_BACKEND, LABEL_SHIFTS, HFGPT2Config
from llm_scratch.model.hf import gpt2_config, require_transformers

# HFGPT2Config lives in config.py (no torch there: composing a config imports no torch); it is
# still importable from here
__all__ = ["HF_BACKEND", "HFGPT2", "HFGPT2Config", "LABEL_SHIFTS"]


def to_hf(config: HFGPT2Config):
    """The ``transformers.GPT2Config`` of ``config``."""
    return gpt2_config(
        vocab_size=config.vocab_size,
        context_length=config.context_length,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        dropout=config.dropout,
        tie_weights=config.tie_weights,
        use_cache=False,
    )


class HFGPT2(LanguageModel):
    """``transformers.GPT2LMHeadModel`` (in ``self.hf``) behind our models' interface (base.py);
    it has no KV cache of ours, so generation re-runs the window for each token."""

    supports_kv_cache = False

    def __init__(self, config: HFGPT2Config) -> None:
        super().__init__()
        transformers = require_transformers()
        self.config = config
        self.hf = transformers.GPT2LMHeadModel(to_hf(config))  # GPT-2's own initialisation

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """As :meth:`GPT.forward`; the padding mask and per-row positions go to HF's model."""
        padding = _padding_inputs(idx, attention_mask)
        if self.config.label_shift == "double" and targets is not None:
            # The mistake: targets are already x shifted by one, and HF shifts them again, so
            # logits[:, t] is scored against x[:, t + 2].
            out = self.hf(input_ids=idx, labels=targets, use_cache=False, **padding)
            return out.logits, out.loss
        logits = self.hf(input_ids=idx, use_cache=False, **padding).logits
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
            )
        return logits, loss

    def hidden_states(
        self, idx: Tensor, kv_cache: None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        """The final hidden states (after ln_f), as :meth:`GPT.hidden_states`."""
        padding = _padding_inputs(idx, attention_mask)
        return self.hf.transformer(input_ids=idx, use_cache=False, **padding).last_hidden_state

    @property
    def lm_head(self) -> nn.Module:
        return self.hf.lm_head

    @property
    def position_embedding(self) -> nn.Embedding:
        return self.hf.transformer.wpe


def _padding_inputs(idx: Tensor, attention_mask: Tensor | None) -> dict[str, Tensor]:
    """GPT2Model's arguments for a padded batch: its attention_mask, and position_ids counted
    from each row's first real token as our GPT counts them; none without a mask."""
    if attention_mask is None:
        return {}
    mask = real_tokens(idx, attention_mask)
    return {"attention_mask": mask.long(), "position_ids": positions_from_mask(mask, idx.size(1))}
