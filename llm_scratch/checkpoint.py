"""Our checkpoint files, without Lightning: which file a run directory means, reading one safely,
checking that it can continue a run, loading its model, tokenizer and prompt template for
sampling, and starting a fine-tuning run from it (``init_from=<run dir or .ckpt>``).

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain containers
are unpickled, so a file carrying a malicious pickle payload is refused before its code runs.

Which checkpoint a run directory means depends on what it is for:

- continuing training (``ckpt_path=``): ``checkpoints/last.ckpt``, the latest state;
- sampling and fine-tuning from it (``sample.py``, ``init_from=``): the best checkpoint, the
  lowest validation loss among ``checkpoints/best-*.ckpt`` (the model's weights only, no
  optimizer state), else ``last.ckpt`` (a run that never validated).

Both accept a ``.ckpt`` file, a run directory, or ``last``: the most recent run under the log
directory that saved a ``last.ckpt``.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from llm_scratch.data.instruct import PromptTemplate
from llm_scratch.data.tokenizers import Tokenizer, tokenizer_from_dict
from llm_scratch.errors import UserError
from llm_scratch.hub import check_hub_name
from llm_scratch.model.factory import build_model
from llm_scratch.model.pretrained import (
    config_from_trained,
    init_from_model_config,
    load_initial_weights,
    load_trained_weights,
)

log = logging.getLogger(__name__)

MODEL_PREFIX = "model."
LAST = "last.ckpt"
# ModelCheckpoint's filename in configs/callbacks/default.yaml: best-step000090-val6.6123.ckpt
_BEST = re.compile(r"^best-step(?P<step>\d+)-val(?P<val>[-+0-9.eE]+|nan|inf)\.ckpt$")


def best_checkpoint(run_dir: Path) -> Path | None:
    """The ``best-*.ckpt`` of ``run_dir`` with the lowest validation loss (with save_top_k > 1
    there are several), the later step on a tie; None when there is none."""
    ranked = []
    for path in (run_dir / "checkpoints").glob("best-*.ckpt"):
        match = _BEST.match(path.name)
        if match is not None:
            ranked.append((float(match["val"]), -int(match["step"]), path))
    return min(ranked)[2] if ranked else None


def resolve_checkpoint(
    spec: str,
    purpose: Literal["resume", "sample"],
    log_dir: str | Path = "outputs",
    key: str = "ckpt_path",
) -> Path:
    """The checkpoint file that ``spec`` (a ``.ckpt`` file, a run directory or ``last``) means
    for ``purpose``, as the module docstring says; a :class:`UserError` (naming the config
    ``key`` that gave ``spec``) when there is none."""
    if spec == "last":
        runs = sorted(Path(log_dir).glob(f"**/checkpoints/{LAST}"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise UserError(
                f"ckpt_path=last: no run under {log_dir} has a checkpoints/{LAST}. "
                "Pass the checkpoint file or the run directory instead."
            )
        run_dir = runs[-1].parent.parent
        if purpose == "resume":
            return runs[-1]
        return best_checkpoint(run_dir) or runs[-1]
    path = Path(spec)
    if path.is_dir():
        last = path / "checkpoints" / LAST
        found = best_checkpoint(path) if purpose == "sample" else None
        found = found or (last if last.is_file() else None)
        if found is None:
            raise UserError(
                f"{key}={spec} is a directory without checkpoints/{LAST}. "
                "Pass a .ckpt file or a run directory that saved one."
            )
        return found
    if not path.is_file():
        raise UserError(
            f"{key}={spec} does not exist. Pass a .ckpt file, a run directory, or 'last'."
        )
    return path


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


def check_resume_checkpoint(
    path: str | Path, model: dict[str, Any], tokenizer: dict[str, Any]
) -> dict[str, Any]:
    """Refuse, with one line, a checkpoint that cannot continue this run: unreadable, unsafe
    (anything but tensors and plain values), of another model configuration, or of another
    tokenizer. Lightning would otherwise fail later with a page-long ``load_state_dict`` error.
    """
    checkpoint = read_checkpoint(path, mmap=True)
    if "optimizer_states" not in checkpoint:
        raise UserError(
            f"Checkpoint {path} holds the model's weights only (no optimizer state), so it "
            "cannot continue a run: resume from the run's checkpoints/last.ckpt (or pass the run "
            f"directory), or start a new run from these weights with init_from={path}."
        )
    hparams = checkpoint["hyper_parameters"]
    if hparams["tokenizer"] != tokenizer:
        raise UserError(
            f"Checkpoint {path} was trained with another tokenizer "
            f"({_describe_tokenizer(hparams['tokenizer'])}) than this run's data gives "
            f"({_describe_tokenizer(tokenizer)}); resume with the same data settings "
            "(data=..., data.tokenizer=...) as the run that saved it."
        )
    saved = hparams["model"]
    differ = [k for k in sorted(set(saved) | set(model)) if saved.get(k) != model.get(k)]
    if differ:
        shown = ", ".join(
            f"model.{k}={saved.get(k)!r} there but {model.get(k)!r} here" for k in differ
        )
        raise UserError(
            f"Checkpoint {path} belongs to another model configuration ({shown}); resume with "
            "the model settings it was trained with, or start a new run without ckpt_path."
        )
    return checkpoint


def _describe_tokenizer(d: dict[str, Any]) -> str:
    if d.get("type") == "char":
        return f"char, {len(d.get('chars', []))} characters"
    return f"{d.get('type')} {d.get('encoding', '')}".strip()


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
    try:
        model.load_state_dict(model_state(checkpoint), strict=True)
    except RuntimeError as error:
        raise UserError(
            f"Checkpoint {path} does not match its model configuration "
            f"({str(error).splitlines()[0]})."
        ) from error
    return model.to(device).eval(), tokenizer, checkpoint


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's own state dict in a checkpoint (the LightningModule's ``model.*`` keys)."""
    return {
        k[len(MODEL_PREFIX) :]: v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(MODEL_PREFIX)
    }


def prompt_template(checkpoint: dict[str, Any]) -> PromptTemplate | None:
    """The prompt template an instruction-tuned checkpoint was trained with; None for a run
    on plain text."""
    recorded = checkpoint["hyper_parameters"].get("prompt_template")
    return PromptTemplate.from_dict(recorded) if recorded else None


# ----------------------------------------------------------------------- init_from


def is_run_checkpoint(init_from: str) -> bool:
    """Whether ``init_from`` names a checkpoint of ours (a ``.ckpt`` file, or a run directory:
    one with a ``checkpoints/`` folder) rather than a GPT-2 checkpoint (a hub name, or a
    ``save_pretrained`` directory)."""
    path = Path(init_from).expanduser()
    return path.suffix == ".ckpt" or (path / "checkpoints").is_dir()


def _init_checkpoint(init_from: str) -> Path:
    path = Path(init_from).expanduser()
    if path.suffix == ".ckpt" and not path.is_file():
        raise UserError(
            f"init_from={init_from} does not exist. Pass a .ckpt file or a run directory of "
            "ours, or a GPT-2 checkpoint."
        )
    return resolve_checkpoint(str(path), "sample", key="init_from")


def init_from_config(
    model_cfg: dict[str, Any], init_from: str, vocab_size: int, context_length: int
) -> Any:
    """The model config for fine-tuning from ``init_from``: a run of ours (its best checkpoint's
    architecture) or a GPT-2 checkpoint; either way ``model.dropout`` and ``model.attention``
    are the user's and the context is ``data.context_length``."""
    if not is_run_checkpoint(init_from):
        check_hub_name(init_from)  # offline: one line now, not a minute of retries
        return init_from_model_config(model_cfg, init_from, vocab_size, context_length)
    hparams = read_checkpoint(_init_checkpoint(init_from), mmap=True)["hyper_parameters"]
    return config_from_trained(hparams["model"], model_cfg, init_from, vocab_size, context_length)


def load_init_weights(
    model: nn.Module, init_from: str, tokenizer: dict[str, Any] | None = None
) -> None:
    """Copy ``init_from``'s weights into ``model``: a run of ours (its best checkpoint; refused
    when it was trained with another ``tokenizer`` than this run's) or a GPT-2 checkpoint."""
    if not is_run_checkpoint(init_from):
        load_initial_weights(model, init_from)
        return
    path = _init_checkpoint(init_from)
    checkpoint = read_checkpoint(path)
    saved = checkpoint["hyper_parameters"]["tokenizer"]
    if tokenizer is not None and saved != tokenizer:
        raise UserError(
            f"init_from={init_from} was trained with another tokenizer "
            f"({_describe_tokenizer(saved)}) than this run's data gives "
            f"({_describe_tokenizer(tokenizer)}); fine-tune with the tokenizer it was trained "
            "with (data.tokenizer=...)."
        )
    load_trained_weights(model, model_state(checkpoint), init_from)
    log.info("initial weights from %s", path)
