"""Sampling from a trained checkpoint (the code behind ``training/sample.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llm_scratch.checkpoint import load_model
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


def _checkpoint_file(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        candidates = sorted((p / "checkpoints").glob("best-*.ckpt")) or [
            p / "checkpoints" / "last.ckpt"
        ]
        return candidates[-1]
    return p


def generate_samples(cfg: SampleConfig) -> list[str]:
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer, _ = load_model(_checkpoint_file(cfg.ckpt_path), device=device)
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
