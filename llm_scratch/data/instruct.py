"""Instruction data: examples of (instruction, input, output), the prompt template that turns
them into text, the seeded train/validation/test split, and batches padded to their longest
example with the loss on the responses only.

The format and the recipe are those of *Build a Large Language Model (From Scratch)*, ch. 7:
Alpaca-style examples, the Alpaca prompt template, an 85/5/10 split, ``<|endoftext|>`` after
each response (the model learns to stop) and as padding, targets -100 at the padding. Unlike
the book, the prompt and the response are tokenized separately, so a prompt has exactly the
tokens at training time that it has when it is sampled from alone.

Nothing here needs Lightning: the data module (instruct_datamodule.py) builds on it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from llm_scratch.data.corpora import CorpusInfo, named_file_path
from llm_scratch.data.tokenizers import Tokenizer
from llm_scratch.errors import UserError
from llm_scratch.utils.io import parse_user_json, read_user_text

# The book's 1,100 examples, pinned to a commit of its repository.
BOOK_INSTRUCTIONS = CorpusInfo(
    filename="instruction-data.json",
    url=(
        "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/"
        "4ac480c9ae56ead3ba3bf71060ecbcd783bb8dc6/ch07/01_main-chapter-code/instruction-data.json"
    ),
    sha256="7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
    size=203_524,
    prompt="",
    description="1,100 instruction/input/output examples (Alpaca format), the book's ch. 7",
)
# train, validation and test fractions, as the book splits (test and train rounded down)
SPLIT = (0.85, 0.05, 0.10)
IGNORE_INDEX = -100  # F.cross_entropy's ignore_index: no loss at this target


@dataclass(frozen=True)
class PromptTemplate:
    """How an instruction (and an optional input) becomes the prompt the model continues.

    The default is the Alpaca template, written down here once; a run records its template in
    its checkpoints (``to_dict``), so sampling from one formats prompts as it was trained.
    ``default_instruction`` is the instruction of every example when the data has no
    instruction field (``data.instruction``, e.g. "Summarize the dialogue.").
    """

    instruction: str = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{instruction}"
    )
    input: str = "\n\n### Input:\n{input}"  # left out when the input is empty
    response: str = "\n\n### Response:\n"
    default_instruction: str | None = None

    def format(self, instruction: str | None = None, input: str = "") -> str:
        """The prompt for ``instruction`` (default: ``default_instruction``) and ``input``."""
        if instruction is None:
            instruction = self.default_instruction
        if instruction is None:
            raise UserError(
                "This prompt template has no default instruction: give each prompt an instruction."
            )
        text = self.instruction.format(instruction=instruction)
        if input:
            text += self.input.format(input=input)
        return text + self.response

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptTemplate:
        return cls(**d)


ALPACA = PromptTemplate()


@dataclass(frozen=True)
class Example:
    """One example; ``index`` is its place in the file (0-based), for error messages."""

    instruction: str | None  # None: the template's default instruction
    input: str
    output: str
    index: int = 0


@dataclass(frozen=True)
class Fields:
    """Which field of an example holds what. ``instruction=None``: the data has no instruction
    field (every example gets the template's default instruction); ``input=None``: no input."""

    instruction: str | None = "instruction"
    input: str | None = "input"
    output: str = "output"


def book_instructions_path(
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Path:
    """The book's instruction-data.json, verified: in the data directory, the cache, or
    downloaded (as the corpora are)."""
    return named_file_path(BOOK_INSTRUCTIONS, data_dir, cache_dir, download)


def _parse(path: Path) -> list[Any]:
    """The records of a JSON file holding a list, or of a JSON Lines file (one per line); read
    through the package's one safe loader (llm_scratch/utils/io.py): unreadable, non-UTF-8,
    invalid or too deeply nested JSON is one line naming the file."""
    text = read_user_text(path, str(path))
    if text.lstrip().startswith("["):  # one JSON list
        return parse_user_json(text, str(path), "give a JSON list of examples or JSON Lines")
    records = []  # JSON Lines: one object per non-empty line
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = (
            f"{path} is neither a JSON list of examples nor JSON Lines: line {lineno} "
            f"(example {len(records)})"
        )
        records.append(parse_user_json(line, where, line=True))
    return records


def load_examples(path: str | os.PathLike, fields: Fields = Fields()) -> list[Example]:
    """The examples of a ``.json`` (a list of objects) or ``.jsonl`` file (one object a line).

    Bad input is one :class:`UserError` line naming the file and the example's index.
    """
    path = Path(path).expanduser()
    records = _parse(path)
    if not records:
        raise UserError(f"{path} holds no examples; give at least a few dozen.")
    examples = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(
                f"{path}: example {i} is a JSON {type(record).__name__}, not an object with fields."
            )
        values: dict[str, str] = {}
        for role, key in asdict(fields).items():
            if key is None:
                continue
            if key not in record:
                known = ", ".join(repr(k) for k in record) or "none"
                raise UserError(
                    f"{path}: example {i} has no field {key!r} (its fields: {known}); set "
                    f"data.{role}_field to the field that holds the {role}."
                )
            value = record[key]
            if not isinstance(value, str):
                raise UserError(
                    f"{path}: example {i}'s field {key!r} is a JSON {type(value).__name__}, "
                    "not text."
                )
            values[role] = value
        examples.append(
            Example(values.get("instruction"), values.get("input", ""), values["output"], i)
        )
    return examples


def split_examples(
    examples: Sequence[Example], seed: int, what: str = "the data"
) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, validation, test): a seeded shuffle cut 85/5/10 as the book cuts its data
    (training and test sizes rounded down, validation the rest)."""
    n = len(examples)
    n_train, n_test = int(n * SPLIT[0]), int(n * SPLIT[2])
    n_val = n - n_train - n_test
    if n_train < 1 or n_val < 1:
        raise UserError(
            f"{what} has {n} example(s), too few for an 85/5/10 train/validation/test split; "
            "give at least 20."
        )
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [examples[i] for i in order]
    return shuffled[:n_train], shuffled[n_train + n_test :], shuffled[n_train : n_train + n_test]


@dataclass(frozen=True)
class EncodedExample:
    """An example's tokens: prompt, response and end-of-text (at most ``max_length + 1``:
    inputs and targets are each one shorter), and how many of them are the prompt's."""

    ids: np.ndarray
    prompt_length: int


def encode_examples(
    examples: Sequence[Example],
    template: PromptTemplate,
    tokenizer: Tokenizer,
    max_length: int,
    source: str,
) -> list[EncodedExample]:
    """Tokenize each example as prompt + response + end-of-text, truncated to ``max_length``
    input tokens; an example whose prompt alone fills them (nothing left of its response to
    learn) is a :class:`UserError` naming it."""
    eos = tokenizer.eos_id
    if eos is None:
        raise UserError(
            f"The {tokenizer.name} tokenizer has no end-of-text token, which instruction data "
            "needs (after each response, and as padding): use data.tokenizer=gpt2."
        )
    encoded = []
    for example in examples:
        prompt = tokenizer.encode(template.format(example.instruction, example.input))
        ids = prompt + tokenizer.encode(example.output) + [eos]
        if len(prompt) > max_length:
            raise UserError(
                f"{source}: example {example.index} has a {len(prompt)}-token prompt, longer "
                f"than data.max_length={max_length}, so nothing of its response would be "
                "trained on; raise data.max_length (and data.context_length) or shorten it."
            )
        encoded.append(EncodedExample(np.asarray(ids[: max_length + 1]), len(prompt)))
    return encoded


class InstructionDataset(Dataset):
    """Encoded examples; item i is example i's :class:`EncodedExample`."""

    def __init__(self, examples: Sequence[EncodedExample]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EncodedExample:
        return self.examples[int(index)]

    @property
    def num_tokens(self) -> int:
        """Input tokens over all examples (padding not counted)."""
        return sum(len(e.ids) - 1 for e in self.examples)


class InstructionCollator:
    """Batches of examples, right-padded to the longest in the batch (not to a fixed length).

    A batch is a dict: ``input_ids`` and ``targets`` (B, T) (targets are the inputs shifted by
    one, -100 at the padding and, with ``mask_prompt``, at every prompt token, so the loss is
    over the responses and their end-of-text only), ``attention_mask`` (B, T) (1 for real
    tokens), and as plain ints ``num_tokens`` (real input tokens) and ``num_targets`` (targets
    the loss is over), counted here on the CPU so no step waits for the device to count them.

    Right padding: a causal model never attends from a real token to the padding after it, and
    every row's positions start at 0, so training needs no attention mask (and keeps the fused
    kernel's causal fast path); generation pads on the left and passes the mask.
    """

    def __init__(self, pad_id: int, mask_prompt: bool = True) -> None:
        self.pad_id = int(pad_id)
        self.mask_prompt = bool(mask_prompt)

    def __call__(self, items: Sequence[EncodedExample]) -> dict[str, Tensor | int]:
        T = max(len(item.ids) - 1 for item in items)
        B = len(items)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((B, T), dtype=torch.long)
        num_tokens = num_targets = 0
        for b, item in enumerate(items):
            ids = torch.as_tensor(item.ids, dtype=torch.long)
            n = len(ids) - 1
            input_ids[b, :n] = ids[:-1]
            targets[b, :n] = ids[1:]
            attention_mask[b, :n] = 1
            first = 0
            if self.mask_prompt:  # targets before the response's first token are the prompt's
                first = item.prompt_length - 1
                targets[b, :first] = IGNORE_INDEX
            num_tokens += n
            num_targets += n - first
        return {
            "input_ids": input_ids,
            "targets": targets,
            "attention_mask": attention_mask,
            "num_tokens": num_tokens,
            "num_targets": num_targets,
        }


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token id rows left-padded to the longest, and their attention mask (1: real), for
    generating from prompts of different lengths in one batch."""
    T = max(len(row) for row in rows)
    idx = torch.full((len(rows), T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            idx[b, T - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
            mask[b, T - len(row) :] = 1
    return idx, mask
