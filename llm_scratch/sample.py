"""Sampling from a trained checkpoint (the code behind ``training/sample.py``): continuations
of one prompt, or the answers to every prompt of a file, in left-padded batches."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llm_scratch.checkpoint import load_model, prompt_template, resolve_checkpoint
from llm_scratch.constraints import INT64_MAX, MAX_NEW_TOKENS, check, enforce
from llm_scratch.data.instruct import PromptTemplate, left_pad
from llm_scratch.data.tokenizers import Tokenizer
from llm_scratch.errors import UserError, report_user_error
from llm_scratch.utils.io import parse_user_json, read_user_text

MAX_SAMPLES = 65_536


@dataclass
class SampleConfig:
    """sample.py's options. Each one's range is declared on its field (``metadata=check(...)``,
    llm_scratch/constraints.py) and checked, with NaN, infinity and integers beyond 64 bits,
    before the checkpoint is read."""

    ckpt_path: str = field(default="???", metadata=check(nonempty=True))
    prompt: str = field(default="\n", metadata=check(nonempty=True))
    prompt_file: str | None = field(default=None, metadata=check(nonempty=True))
    # every prompt of a file: one per line, or JSON Lines of instruction/input (answered in
    # batches of batch_size, each printed with its response)
    prompts_file: str | None = field(default=None, metadata=check(nonempty=True))
    batch_size: int = field(default=8, metadata=check(ge=1))
    # the samples of a prompt are generated as one batch
    num_samples: int = field(default=1, metadata=check(ge=1, le=MAX_SAMPLES))
    # generated one at a time: a million is hours on a GPU
    max_new_tokens: int = field(default=200, metadata=check(ge=1, le=MAX_NEW_TOKENS))
    temperature: float = field(default=0.8, metadata=check(ge=0, why="0: greedy"))
    top_k: int | None = field(default=200, metadata=check(ge=1, why="null: all tokens"))
    top_p: float | None = field(default=None, metadata=check(gt=0, le=1, why="null: off"))
    seed: int = field(default=1337, metadata=check(ge=0, le=INT64_MAX))
    device: str = field(default="auto", metadata=check(nonempty=True))

    def __post_init__(self) -> None:
        enforce(self, "")


# Taken verbatim: a prompt such as "ROMEO:" or "[1, 2]" is text, not YAML.
TEXT_KEYS = ("ckpt_path", "prompt", "prompt_file", "prompts_file", "device")


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
    if "prompts_file" in text and ({"prompt", "prompt_file"} & set(text)):
        raise UserError(
            "prompts_file answers every prompt of a file: give it without prompt= or prompt_file="
        )
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


def _load(cfg: SampleConfig) -> tuple[torch.nn.Module, Tokenizer, dict]:
    device = resolve_device(cfg.device)
    path = checkpoint_path(cfg.ckpt_path)
    if Path(cfg.ckpt_path).resolve() != path.resolve():
        print(f"checkpoint: {path}", file=sys.stderr)
    return load_model(path, device=device)


def checkpoint_path(spec: str) -> Path:
    """The checkpoint ``ckpt_path=spec`` means: a .ckpt file; a run directory (its best
    checkpoint, lowest val/loss, else its last.ckpt); ``last``: the latest run's last.ckpt, as
    training's ``ckpt_path=last``; ``best``: the latest run's best checkpoint. The latest run is
    looked for where runs go by default ($LLM_SCRATCH_LOG_DIR, else outputs/)."""
    log_dir = os.environ.get("LLM_SCRATCH_LOG_DIR", "outputs")
    if spec == "last":
        return resolve_checkpoint("last", "resume", log_dir)
    if spec == "best":
        try:
            return resolve_checkpoint("last", "sample", log_dir)
        except UserError as error:
            raise UserError(str(error).replace("ckpt_path=last", "ckpt_path=best")) from None
    return resolve_checkpoint(spec, "sample", log_dir)


def generate_samples(cfg: SampleConfig) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (or of ``prompt_file``'s text)."""
    model, tokenizer, _ = _load(cfg)
    prompt = cfg.prompt
    if cfg.prompt_file:
        prompt = read_user_text(cfg.prompt_file, f"prompt_file={cfg.prompt_file}")
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


def sample_responses(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 1337,
    batch_size: int = 8,
) -> list[str]:
    """The response to each prompt: the tokens generated after it, up to its end-of-text.

    Prompts go ``batch_size`` at a time, left-padded with an attention mask, so each response
    is the one its prompt gets alone when decoding greedily (``temperature=0``). Used by
    ``training/sample.py prompts_file=`` and by the training's sample callback.
    """
    encoded = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt)
        if not ids:
            raise UserError(f"Prompt {i + 1} is empty after tokenization: give it some text.")
        if len(ids) > model.config.context_length:
            raise UserError(
                f"Prompt {i + 1} is {len(ids)} tokens, longer than the model's context of "
                f"{model.config.context_length}: shorten it."
            )
        encoded.append(ids)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    eos = tokenizer.eos_id
    responses = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        # the padding is never attended to: any id does, the end-of-text one where there is one
        idx, mask = left_pad(rows, pad_id=eos if eos is not None else 0)
        try:
            out = model.generate(
                idx.to(device),
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                eos_id=eos,
                generator=generator,
                attention_mask=mask.to(device),
            )
        except ValueError as error:
            raise UserError(str(error)) from error
        for row in out[:, idx.size(1) :].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            responses.append(tokenizer.decode(row))
    return responses


@dataclass(frozen=True)
class Prompt:
    """A prompt of a prompts file: as shown (the line, or instruction and input) and as the
    model gets it (formatted with the checkpoint's template, if it has one)."""

    shown: str
    text: str


def read_prompts(path: str, template: PromptTemplate | None) -> list[Prompt]:
    """The prompts of ``path``: JSON Lines (``.jsonl``) of ``instruction``/``input`` objects,
    for a checkpoint trained on instructions; else one prompt per non-empty line, formatted
    with the checkpoint's template when it has one (each line an instruction, or the input
    when the template has a default instruction)."""
    lines = read_user_text(path, f"prompts_file={path}").splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise UserError(f"prompts_file={path} has no prompts: write one per line.")
    if not path.endswith(".jsonl"):
        if template is None:
            return [Prompt(line, line) for _, line in numbered]
        if template.default_instruction is not None:  # each line is the input
            return [Prompt(line, template.format(None, line)) for _, line in numbered]
        return [Prompt(line, template.format(line)) for _, line in numbered]
    if template is None:
        raise UserError(
            f"prompts_file={path} holds instructions (JSON Lines), but the checkpoint was not "
            "trained on instruction data (it records no prompt template): give one prompt per "
            "line in a text file instead."
        )
    prompts = []
    for n, line in numbered:
        record = parse_user_json(line, f"prompts_file={path}: line {n}", line=True)
        if not isinstance(record, dict):
            raise UserError(f"prompts_file={path}: line {n} is not a JSON object.")
        instruction, given = record.get("instruction"), record.get("input", "")
        if instruction is None and template.default_instruction is None:
            raise UserError(f"prompts_file={path}: line {n} has no 'instruction'.")
        if not isinstance(instruction, str | None) or not isinstance(given, str):
            raise UserError(f"prompts_file={path}: line {n}'s instruction and input must be text.")
        shown = "\n\n".join(t for t in (instruction, given) if t)
        prompts.append(Prompt(shown, template.format(instruction, given)))
    return prompts


def answer_prompts(cfg: SampleConfig) -> list[tuple[str, str]]:
    """(prompt as shown, response) for each prompt of ``prompts_file``, ``num_samples`` each."""
    model, tokenizer, checkpoint = _load(cfg)
    prompts = read_prompts(cfg.prompts_file, prompt_template(checkpoint))
    repeated = [p for p in prompts for _ in range(cfg.num_samples)]
    responses = sample_responses(
        model,
        tokenizer,
        [p.text for p in repeated],
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    return [(p.shown, r) for p, r in zip(repeated, responses, strict=True)]


# What each key of SampleConfig means, for --help.
HELP = {
    "ckpt_path": "a run directory (its best checkpoint: lowest val/loss), a .ckpt file, last (the "
    "latest run's last.ckpt, as training's ckpt_path=last) or best (the latest run's best "
    "checkpoint); the latest run under $LLM_SCRATCH_LOG_DIR or outputs/",
    "prompt": "the text to continue",
    "prompt_file": "read the prompt from this file instead",
    "prompts_file": "answer every prompt of a file: one per line, or JSON Lines with "
    "instruction/input (formatted with the checkpoint's template)",
    "batch_size": "prompts answered at once with prompts_file",
    "num_samples": "samples per prompt",
    "max_new_tokens": "tokens to generate",
    "temperature": "0: greedy; higher: more random",
    "top_k": "sample among the k most likely tokens (null: all)",
    "top_p": "nucleus sampling: the smallest set of tokens with this probability (null: off)",
    "seed": "the sampling seed (the same seed, the same samples)",
    "device": "auto (the GPU if there is one), cpu, cuda, cuda:<n> or mps",
}


def usage() -> str:
    """``--help``: the command, every option with its default, and examples."""
    lines = [
        "Sample from a trained model: python training/sample.py ckpt_path=<run dir> [key=value ...]",
        "",
        "Options (key=value; default in brackets):",
    ]
    for f in fields(SampleConfig):
        default = "required" if f.default == "???" else repr(f.default)
        lines.append(f"  {f.name:<15} {HELP[f.name]} [{default}]")
    lines += [
        "",
        "Examples:",
        '  python training/sample.py ckpt_path=last prompt="Every effort moves you" temperature=0',
        "  python training/sample.py ckpt_path=<run dir> prompts_file=prompts.jsonl max_new_tokens=80",
        "",
        "The samples a run shows while it trains are greedy and 50 tokens long",
        "(callbacks.text_sampler); temperature=0 max_new_tokens=50 gives the same here.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if any(arg in ("--help", "-h") for arg in argv):
        print(usage())
        return 0
    try:
        cfg = parse_args(argv)
        if cfg.prompts_file:
            answers = answer_prompts(cfg)
        else:
            samples = generate_samples(cfg)
    except UserError as error:
        return report_user_error(error)
    if cfg.prompts_file:
        for i, (shown, response) in enumerate(answers):
            n = i // cfg.num_samples + 1
            sample = f", sample {i % cfg.num_samples + 1}" if cfg.num_samples > 1 else ""
            print(f"--- prompt {n}{sample} ---\n{shown}\n--- response ---\n{response}\n")
        return 0
    for i, text in enumerate(samples):
        if len(samples) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
    return 0
