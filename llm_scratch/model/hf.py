"""Hugging Face GPT-2 interop: GPT-2 weights into our GPT, and our GPT as a GPT-2 checkpoint.

The conversion works on configs and state dicts; ``GPT.from_hf`` and ``GPT.save_hf`` (in gpt.py)
are the front door, so this module never needs the GPT class itself.

``transformers`` is optional (``pip install -e ".[hf]"``); it is imported only inside the
functions that need it, so the rest of the package works without it.

The parameter names already match (nanoGPT follows GPT-2); two things differ:

- GPT-2 stores its four projection matrices (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``,
  ``mlp.c_proj``) as ``Conv1D`` weights of shape (in, out), ours are ``nn.Linear`` (out, in):
  they are transposed on the way in and out.
- GPT-2's attention modules may carry non-persistent buffers (the causal mask); they are skipped.

GPT-2 is pre-norm, with biases, GELU in its tanh approximation (``gelu_new``) and LayerNorm
eps 1e-5, which is exactly our ``GPTConfig(pre_norm=True, bias=True)`` (``gelu="exact"`` is
``activation_function="gelu"``, both ways); a post-norm GPT, or one
without biases (``bias=False``, or only on q/k/v: ``qkv_bias=False``) has no GPT-2 equivalent
and is refused with a ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import Tensor, nn

from llm_scratch.model.config import GPTConfig

# GPT-2's Conv1D weights, stored (in, out): transposed to and from nn.Linear's (out, in).
CONV1D_SUFFIXES = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# What a GPT built from a checkpoint may choose for itself; everything else is the checkpoint's.
FREE_FIELDS = ("dropout", "attention", "layer_init", "context_length")
# GPT2Config.activation_function for each GPTConfig.gelu; GPT-2's own is gelu_new
HF_ACTIVATIONS = {"tanh": "gelu_new", "exact": "gelu"}
_GELU_OF_HF = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
GPT2_EOS_ID = 50256


def require_transformers():
    """The ``transformers`` module, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            "GPT-2 interop needs Hugging Face transformers: pip install -e '.[hf]' "
            "(or pip install transformers safetensors)"
        ) from error
    return transformers


def load_hf_config(source: Any):
    """The ``GPT2Config`` of ``source``: a directory written by ``save_pretrained``, a hub
    name (``"gpt2"``, when online), a ``GPT2Config`` or a ``GPT2LMHeadModel``."""
    transformers = require_transformers()
    if isinstance(source, transformers.PretrainedConfig):
        config = source
    elif isinstance(source, transformers.PreTrainedModel):
        config = source.config
    else:
        try:
            config = transformers.AutoConfig.from_pretrained(os.fspath(source))
        except (OSError, ValueError) as error:
            raise ValueError(_cannot_load(source, error)) from error
    if getattr(config, "model_type", None) != "gpt2":
        raise ValueError(
            f"{source!r} is a {getattr(config, 'model_type', '?')!r} model, not GPT-2 "
            "(model_type 'gpt2'): only GPT-2 checkpoints map onto this GPT"
        )
    return config


def _cannot_load(source: Any, error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"cannot load a GPT-2 checkpoint from {os.fspath(source)!r} ({first}): give a directory "
        "written by save_pretrained, or a hub name such as 'gpt2' when online"
    )


def gpt_config_from_hf(hf_config: Any, **overrides: Any) -> GPTConfig:
    """The :class:`GPTConfig` equivalent to a ``GPT2Config``.

    The architecture (n_layer, n_head, n_embd, vocab_size, n_positions, tied head; always
    pre-norm with biases) is the checkpoint's. ``overrides`` may set only what does not change
    the weights: ``dropout`` (default: GPT-2's ``resid_pdrop``), ``attention``, ``layer_init``,
    and ``context_length`` up to ``n_positions`` (a shorter context keeps the first rows of
    the position table, as nanoGPT's ``crop_block_size``).
    """
    unknown = sorted(set(overrides) - set(FREE_FIELDS))
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)} cannot be overridden when loading GPT-2 weights: the "
            f"architecture is the checkpoint's (only {', '.join(FREE_FIELDS)} may be set)"
        )
    c = hf_config
    checks = [
        (
            c.activation_function in _GELU_OF_HF,
            "activation_function",
            " or ".join(_GELU_OF_HF),
        ),
        (abs(c.layer_norm_epsilon - 1e-5) < 1e-12, "layer_norm_epsilon", "1e-05"),
        (c.n_inner in (None, 4 * c.n_embd), "n_inner", f"None or {4 * c.n_embd}"),
        (c.scale_attn_weights, "scale_attn_weights", "True"),
        (not c.scale_attn_by_inverse_layer_idx, "scale_attn_by_inverse_layer_idx", "False"),
        (not c.add_cross_attention, "add_cross_attention", "False"),
    ]
    for ok, name, expected in checks:
        if not ok:
            raise ValueError(
                f"GPT2Config.{name}={getattr(c, name)!r} has no equivalent in this GPT "
                f"(it supports {name}={expected})"
            )
    context_length = overrides.pop("context_length", None) or c.n_positions
    if context_length > c.n_positions:
        raise ValueError(
            f"context_length={context_length} is longer than the checkpoint's "
            f"n_positions={c.n_positions}: use a context of at most {c.n_positions} tokens"
        )
    return GPTConfig(
        vocab_size=c.vocab_size,
        context_length=context_length,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        dropout=overrides.pop("dropout", float(c.resid_pdrop)),
        bias=True,
        pre_norm=True,
        tie_weights=bool(getattr(c, "tie_word_embeddings", True)),
        gelu=_GELU_OF_HF[c.activation_function],
        **overrides,
    )


def state_dict_from_hf(hf_state: dict[str, Tensor], config: GPTConfig) -> dict[str, Tensor]:
    """A GPT2LMHeadModel state_dict as our GPT's: Conv1D weights transposed, buffers dropped,
    the position table cropped to ``config.context_length``, everything in float32."""
    state = {}
    for key, value in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # GPT-2's causal-mask buffers (older transformers), not parameters
        if key.endswith(CONV1D_SUFFIXES):
            value = value.t()
        if key == "transformer.wpe.weight":
            value = value[: config.context_length]
        state[key] = value.detach().to(torch.float32).contiguous()
    if config.tie_weights:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def _hf_model(source: Any):
    transformers = require_transformers()
    if isinstance(source, transformers.PreTrainedModel):
        return source
    load_hf_config(source)  # a clear error for a missing path or another model type
    try:
        return transformers.GPT2LMHeadModel.from_pretrained(os.fspath(source))
    except (OSError, ValueError) as error:
        raise ValueError(_cannot_load(source, error)) from error


def load_hf_weights(model: nn.Module, source: Any) -> nn.Module:
    """Copy the weights of the GPT-2 checkpoint ``source`` into ``model`` (our GPT), in place.

    ``model``'s config must be what :func:`gpt_config_from_hf` gives for the checkpoint (its
    dropout, attention and a context up to n_positions are free); otherwise ``ValueError``.
    """
    hf_model = _hf_model(source)
    own = model.config
    free = {name: getattr(own, name) for name in FREE_FIELDS}
    expected = gpt_config_from_hf(hf_model.config, **free)
    # qkv_bias=None and True both mean a q/k/v bias, as GPT-2 has
    expected = dataclasses.replace(expected, qkv_bias=own.qkv_bias if own.attn_qkv_bias else None)
    if expected != own:
        diff = [
            f"{name}={getattr(own, name)!r} (checkpoint: {getattr(expected, name)!r})"
            for name in own.__dataclass_fields__
            if getattr(own, name) != getattr(expected, name)
        ]
        raise ValueError(f"the model does not match the GPT-2 checkpoint: {', '.join(diff)}")
    model.load_state_dict(state_dict_from_hf(hf_model.state_dict(), own), strict=True)
    return model


def hf_weights(source: Any, **overrides: Any) -> tuple[GPTConfig, dict[str, Tensor]]:
    """The GPTConfig and our state_dict for the GPT-2 checkpoint ``source`` (see
    :func:`load_hf_config`; ``overrides``: dropout, attention, layer_init, context_length)."""
    hf_model = _hf_model(source)
    config = gpt_config_from_hf(hf_model.config, **overrides)
    return config, state_dict_from_hf(hf_model.state_dict(), config)


def hf_config_from_gpt(config: GPTConfig):
    """The ``GPT2Config`` of a GPT, or ``ValueError`` when GPT-2 cannot express it."""
    if not config.pre_norm:
        raise ValueError(
            "a post-norm GPT (pre_norm=False) cannot be written as GPT-2, which is pre-norm"
        )
    if not config.bias:
        raise ValueError(
            "a GPT without biases (bias=False) cannot be written as GPT-2, which always has them"
        )
    if not config.attn_qkv_bias:
        raise ValueError(
            "a GPT without the q/k/v bias (qkv_bias=False) cannot be written as GPT-2, whose "
            "attention always has it"
        )
    return gpt2_config(
        vocab_size=config.vocab_size,
        context_length=config.context_length,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        dropout=config.dropout,
        tie_weights=config.tie_weights,
        activation_function=HF_ACTIVATIONS[config.gelu],
    )


def gpt2_config(
    vocab_size: int,
    context_length: int,
    n_layer: int,
    n_head: int,
    n_embd: int,
    dropout: float,
    tie_weights: bool,
    activation_function: str = "gelu_new",
    **extra: Any,
):
    """A ``transformers.GPT2Config`` in our field names (GPT-2's LayerNorm eps; its gelu_new
    unless ``activation_function`` says otherwise)."""
    transformers = require_transformers()
    # GPT-2's <|endoftext|> exists only in its own 50,257-token vocabulary
    eos = GPT2_EOS_ID if vocab_size > GPT2_EOS_ID else None
    return transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=context_length,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        activation_function=activation_function,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=tie_weights,
        bos_token_id=eos,
        eos_token_id=eos,
        **extra,
    )


def to_hf(model: nn.Module):
    """A ``transformers.GPT2LMHeadModel`` with the weights of ``model`` (our GPT; float32, eval
    mode)."""
    transformers = require_transformers()
    hf_model = transformers.GPT2LMHeadModel(hf_config_from_gpt(model.config))
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith(CONV1D_SUFFIXES):
            value = value.t()
        state[key] = value.detach().to(torch.float32).contiguous()
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:  # a bug, not a user error: the two layouts should agree
        raise RuntimeError(f"GPT-2 layout mismatch: missing {missing}, unexpected {unexpected}")
    return hf_model.eval()


def save_hf(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write ``model`` as a Hugging Face GPT-2 directory (config.json, model.safetensors) that
    ``GPT2LMHeadModel.from_pretrained(directory)`` loads with the same logits."""
    to_hf(model).save_pretrained(os.fspath(directory))
