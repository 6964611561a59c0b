"""Sampling from a trained checkpoint (the code behind ``training/sample.py``)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llm_scratch.checkpoint import load_model, resolve_checkpoint
from llm_scratch.data.tokenizers import Tokenizer
from llm_scratch.errors import UserError, report_user_error


@dataclass
class SampleConfig:
    ckpt_path: str = "???"
    prompt: str = "\n"
    prompt_file: str | None = None
    num_samples: int = 1
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float | None = None
    seed: int = 1337
    device: str = "auto"


# Taken verbatim: a prompt such as "ROMEO:" or "[1, 2]" is text, not YAML.
TEXT_KEYS = ("ckpt_path", "prompt", "prompt_file", "device")


def parse_args(argv: list[str]) -> SampleConfig:
    text, typed = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UserError(f'Bad argument {arg!r}: write key=value, e.g. prompt="Once upon"')
        if key in TEXT_KEYS:
            text[key] = value
        else:
            typed.append(arg)
    try:
        schema = OmegaConf.structured(SampleConfig)
        cfg = OmegaConf.merge(schema, OmegaConf.from_dotlist(typed), text)
        if OmegaConf.is_missing(cfg, "ckpt_path"):
            raise UserError("ckpt_path is required: ckpt_path=<run dir or .ckpt file>")
        return SampleConfig(**OmegaConf.to_container(cfg))
    except OmegaConfBaseException as error:
        raise UserError(f"Bad argument: {str(error).splitlines()[0]}") from error


def resolve_device(name: str) -> str:
    """``auto`` as the GPU if there is one, else the CPU; a device this machine lacks or a name
    torch does not know is a :class:`UserError`."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise UserError(
            f"device={name} is not a device torch knows: use cpu, cuda, cuda:<n>, mps or auto."
        ) from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(
                f"device={name} but this machine's torch sees no CUDA GPU: use device=cpu "
                "(or device=auto)."
            )
        if device.index is not None and device.index >= count:
            raise UserError(
                f"device={name} but only {count} CUDA GPU(s) are visible (cuda:0 to "
                f"cuda:{count - 1}): pick one of them."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={name} but MPS is not available here: use device=cpu.")
    return name


def generate_samples(cfg: SampleConfig) -> list[str]:
    device = resolve_device(cfg.device)
    if cfg.num_samples < 1:  # before loading the checkpoint: a quick answer
        raise UserError(f"num_samples={cfg.num_samples}: ask for at least 1 sample.")
    # the same forms training's ckpt_path takes; `last` looks where runs go by default
    log_dir = os.environ.get("LLM_SCRATCH_LOG_DIR", "outputs")
    path = resolve_checkpoint(cfg.ckpt_path, "sample", log_dir)
    if Path(cfg.ckpt_path).resolve() != path.resolve():
        print(f"checkpoint: {path}", file=sys.stderr)
    model, tokenizer, _ = load_model(path, device=device)
    prompt = cfg.prompt
    if cfg.prompt_file:
        try:
            prompt = Path(cfg.prompt_file).read_text(encoding="utf-8")
        except OSError as error:
            raise UserError(
                f"Cannot read prompt_file={cfg.prompt_file}: {error.strerror}"
            ) from error
    return sample_texts(
        model,
        tokenizer,
        prompt,
        num_samples=cfg.num_samples,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        seed=cfg.seed,
    )


def sample_texts(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    num_samples: int = 1,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 1337,
) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (prompt included), reproducible for a seed.

    Used by ``training/sample.py`` and by the training's sample callback.
    """
    if num_samples < 1:
        raise UserError(f"num_samples={num_samples}: ask for at least 1 sample.")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UserError("The prompt is empty after tokenization: give at least one character.")
    if len(ids) > model.config.context_length:
        raise UserError(
            f"The prompt is {len(ids)} tokens, longer than the model's context of "
            f"{model.config.context_length}: shorten it."
        )
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    try:
        out = model.generate(
            idx,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=tokenizer.eos_id,
            generator=generator,
        )
    except ValueError as error:
        raise UserError(str(error)) from error
    return [tokenizer.decode(row.tolist()) for row in out]


def main(argv: list[str]) -> int:
    try:
        samples = generate_samples(parse_args(argv))
    except UserError as error:
        return report_user_error(error)
    for i, text in enumerate(samples):
        if len(samples) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
    return 0
