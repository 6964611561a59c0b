"""Load a trained GPT and its tokenizer from a Lightning checkpoint, without Lightning.

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain containers
are unpickled, so a file carrying a malicious pickle payload is refused before its code runs.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_scratch.data.tokenizers import Tokenizer, tokenizer_from_dict
from llm_scratch.errors import UserError
from llm_scratch.model.factory import build_model

MODEL_PREFIX = "model."


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint file safely; any unreadable or unsafe file is a :class:`UserError`.

    ``mmap=True`` maps the tensors instead of reading them (a cheap look at the metadata).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist: pass the path of a .ckpt file.")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as error:
        raise UserError(f"Cannot read checkpoint {path}: {error.strerror}.") from error
    # torch.save writes a zip archive (PK..), or a pickle (0x80..) in its legacy format; anything
    # else (a text file, a log) is not a checkpoint at all (an empty file reads as truncated)
    if head and not head.startswith((b"PK", b"\x80")):
        raise UserError(
            f"{path} is not a checkpoint (not a file written by torch.save): pass a .ckpt file "
            "such as <run dir>/checkpoints/last.ckpt, or the run directory."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise UserError(
            f"Checkpoint {path} holds objects other than tensors and plain values, so it was "
            f"refused unread (weights_only=True): {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        # ValueError: e.g. a UnicodeDecodeError from bytes corrupted inside the pickle
        raise UserError(
            f"Checkpoint {path} is truncated or corrupted ({str(error).splitlines()[0]}). "
            "Use another checkpoint of the run, e.g. its checkpoints/last.ckpt or best-*.ckpt."
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not a Lightning checkpoint of llm_scratch (no state_dict).")
    hparams = checkpoint.get("hyper_parameters") or {}
    if "model" not in hparams or "tokenizer" not in hparams:
        raise UserError(
            f"{path} was not written by llm_scratch's training (no model config or tokenizer "
            "in its hyper_parameters)."
        )
    return checkpoint


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Tokenizer, dict[str, Any]]:
    """Return the model (in eval mode, on ``device``), its tokenizer and the raw checkpoint.

    The model is our ``GPT``, or ``HFGPT2`` for a run trained with ``model=hf_gpt2``; both
    have ``generate``."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    config, model = build_model(hparams["model"])
    tokenizer = tokenizer_from_dict(hparams["tokenizer"])
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(
            f"Checkpoint {path}: its tokenizer has {tokenizer.vocab_size} tokens but the model "
            f"{config.vocab_size}; the checkpoint does not belong with this tokenizer."
        )
    state = {
        k[len(MODEL_PREFIX) :]: v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(MODEL_PREFIX)
    }
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UserError(
            f"Checkpoint {path} does not match its model configuration "
            f"({str(error).splitlines()[0]})."
        ) from error
    return model.to(device).eval(), tokenizer, checkpoint
