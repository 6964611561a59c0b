"""Starting from pretrained weights (``init_from=``): the architecture and the weights of a GPT-2
checkpoint, or of a GPT trained here, for fine-tuning our GPT. Failures are one-line
:class:`UserError` s.

Reading our checkpoint files is llm_scratch/checkpoint.py's; this module gets their model config
and state dict.
"""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn
from torch import Tensor

from llm_scratch.errors import UserError
from llm_scratch.model.config import GPTConfig
from llm_scratch.model.gpt import GPT
from llm_scratch.model.hf import FREE_FIELDS, gpt_config_from_hf, load_hf_config, load_hf_weights
from llm_scratch.model.hf_backend import HF_BACKEND

log = logging.getLogger(__name__)


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
    warn_ignored_architecture(model_cfg, config, init_from)
    return config


def warn_ignored_architecture(model_cfg: dict[str, Any], config: GPTConfig, init_from: str) -> None:
    """Warn about the ``model.*`` architecture values that fine-tuning from ``init_from``
    ignores because the checkpoint's (``config``) differ."""
    ignored = {
        k: model_cfg[k]
        for k in ("n_layer", "n_head", "n_embd", "bias", "pre_norm", "tie_weights")
        if k in model_cfg and model_cfg[k] != getattr(config, k)
    }
    # qkv_bias=null means "as bias": only an explicit value the checkpoint does not have counts
    if model_cfg.get("qkv_bias") is not None and model_cfg["qkv_bias"] != config.attn_qkv_bias:
        ignored["qkv_bias"] = model_cfg["qkv_bias"]
    if ignored:
        log.warning(
            "init_from=%s: the architecture is the checkpoint's; ignoring model.%s",
            init_from,
            ", model.".join(f"{k}={v}" for k, v in ignored.items()),
        )


def config_from_trained(
    saved: dict[str, Any],
    model_cfg: dict[str, Any],
    init_from: str,
    vocab_size: int,
    context_length: int,
) -> GPTConfig:
    """The GPTConfig for fine-tuning from one of our GPT checkpoints, whose model config is
    ``saved``: its architecture, the user's ``model.dropout`` and ``model.attention``, and the
    context ``data.context_length`` (at most the checkpoint's; a shorter one keeps the first
    rows of the position table)."""
    if HF_BACKEND in (saved.get("backend"), model_cfg.get("backend")):
        raise UserError(
            f"init_from={init_from}: fine-tuning from a checkpoint of ours loads our GPT, not the "
            "hf_gpt2 backend (train the source run, and this one, with a GPT model config)"
        )
    if saved.get("vocab_size") != vocab_size:
        raise UserError(
            f"init_from={init_from} has a {saved.get('vocab_size')}-token vocabulary but the "
            f"data's tokenizer has {vocab_size} tokens: fine-tune with the tokenizer it was "
            "trained with (data.tokenizer=...)"
        )
    trained_context = saved.get("context_length", 0)
    if context_length > trained_context:
        raise UserError(
            f"init_from={init_from} was trained with context_length={trained_context}, shorter "
            f"than data.context_length={context_length}: set data.context_length to at most "
            f"{trained_context}"
        )
    free = {k: model_cfg[k] for k in ("dropout", "attention") if model_cfg.get(k) is not None}
    try:
        config = GPTConfig(**{**saved, **free, "context_length": context_length})
    except (TypeError, ValueError) as error:
        raise UserError(f"init_from={init_from}: {error}") from error
    warn_ignored_architecture(model_cfg, config, init_from)
    return config


def load_trained_weights(model: nn.Module, state: dict[str, Tensor], init_from: str) -> None:
    """Copy a state dict of one of our GPTs into ``model`` (built by :func:`config_from_trained`),
    keeping the first rows of the position table when the context is shorter."""
    if not isinstance(model, GPT):
        raise UserError("init_from needs our GPT model, not the hf_gpt2 backend")
    key = "transformer.wpe.weight"
    if key in state:
        state = {**state, key: state[key][: model.config.context_length]}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UserError(
            f"init_from={init_from}: its weights do not fit its model config "
            f"({str(error).splitlines()[0]})"
        ) from error


def load_initial_weights(model: nn.Module, init_from: str) -> None:
    """Copy the GPT-2 checkpoint ``init_from`` into ``model`` (our GPT), as a UserError on failure."""
    if not isinstance(model, GPT):
        raise UserError("init_from needs our GPT model, not the hf_gpt2 backend")
    try:
        load_hf_weights(model, init_from)
    except (ImportError, ValueError) as error:
        raise UserError(f"init_from={init_from}: {error}") from error
    log.info("initial weights from the GPT-2 checkpoint %s", init_from)
