"""LightningDataModule for instruction fine-tuning (``data=instruct``), built by Hydra from plain
arguments; the examples, template, split and batches are llm_scratch/data/instruct.py's."""

from __future__ import annotations

import numbers
from pathlib import Path

from torch.utils.data import DataLoader

from llm_scratch.constraints import Count, Seed, Size, Workers
from llm_scratch.data.datamodule import ResumableDataModule, _positive_int
from llm_scratch.data.datasets import EpochShuffleSampler
from llm_scratch.data.instruct import (
    ALPACA,
    BOOK_INSTRUCTIONS,
    Example,
    Fields,
    InstructionCollator,
    InstructionDataset,
    PromptTemplate,
    book_instructions_path,
    encode_examples,
    load_examples,
    split_examples,
)
from llm_scratch.data.tokenizers import Tokenizer, build_tokenizer
from llm_scratch.errors import UserError


class InstructDataModule(ResumableDataModule):
    """Instruction examples split 85/5/10 (seeded by ``split_seed``), in batches padded to their
    longest example, the loss over the responses (``mask_prompt``) or over everything.

    ``path=None`` is the book's 1,100 examples (``instruction``, ``input``, ``output``; found in
    the data directory or the cache, else downloaded and sha256-checked); otherwise a ``.json``
    list or a ``.jsonl`` file of your own, its fields named by ``instruction_field``,
    ``input_field`` (null: no input) and ``output_field``. ``instruction`` gives every example
    the same instruction (the data then needs no instruction field), e.g. for a summarisation
    set of ``dialogue``/``summary`` pairs.

    ``context_length`` is the model's context; ``max_length`` (default: the context) truncates
    each example's input tokens. The first ``num_sample_prompts`` validation examples are the
    fixed prompts the sample callback answers before training and at each validation.
    """

    def __init__(
        self,
        path: str | None = None,
        tokenizer: str = "gpt2",
        context_length: Count = 256,
        max_length: Count | None = None,
        batch_size: Count = 8,
        mask_prompt: bool = True,
        instruction_field: str | None = "instruction",
        input_field: str | None = "input",
        output_field: str = "output",
        instruction: str | None = None,
        split_seed: Seed = 1337,
        num_sample_prompts: Size = 3,
        shuffle: bool = True,
        drop_last: bool = True,
        num_workers: Workers = 0,
        pin_memory: bool = False,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        seed: Seed = 1337,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, shuffle, drop_last, seed)
        _positive_int("context_length", context_length)
        _positive_int("max_length", max_length, allow_none=True)
        _positive_int("num_sample_prompts", num_sample_prompts, minimum=0)
        if max_length is not None and max_length > context_length:
            raise UserError(
                f"data.max_length={max_length} is longer than data.context_length="
                f"{context_length}, the model's context; lower it or raise data.context_length."
            )
        if tokenizer == "char":
            raise UserError(
                "data=instruct needs a tokenizer with an end-of-text token (after each response, "
                "and as padding); the char tokenizer has none: use data.tokenizer=gpt2."
            )
        if isinstance(split_seed, bool) or not isinstance(split_seed, numbers.Integral):
            raise UserError(f"data.split_seed must be an integer, got {split_seed!r}.")
        if instruction is None and instruction_field is None:
            raise UserError(
                "data.instruction_field is null but data.instruction is not set: give the "
                "instruction every example shares, e.g. data.instruction='Summarize the dialogue.'"
            )
        if path is not None and not Path(path).expanduser().is_file():
            raise UserError(
                f"data.path={path} is not a file; give a .json list or a .jsonl file of examples "
                "(or leave data.path unset for the book's instruction data)."
            )
        self.path = path
        self.tokenizer_name = tokenizer
        self.context_length = int(context_length)
        self.max_length = int(max_length) if max_length is not None else self.context_length
        self.mask_prompt = bool(mask_prompt)
        # a shared instruction replaces the instruction field
        self.fields = Fields(
            None if instruction is not None else instruction_field, input_field, output_field
        )
        self.instruction = instruction
        self.split_seed = int(split_seed)
        self.num_sample_prompts = int(num_sample_prompts)
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self.prompt_template: PromptTemplate = PromptTemplate(
            **{**ALPACA.to_dict(), "default_instruction": instruction}
        )
        self._tokenizer: Tokenizer | None = None
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self.test_examples: list[Example] = []
        self.test_dataset: InstructionDataset | None = None

    # ----------------------------------------------------------------- data and tokenizer
    @property
    def source(self) -> str:
        """The examples' file: data.path, or the book's file name."""
        return self.path if self.path is not None else BOOK_INSTRUCTIONS.filename

    @property
    def is_named_corpus(self) -> bool:
        """True for the book's data (found or downloaded by name, not a path of the user's)."""
        return self.path is None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.tokenizer_name)
        return self._tokenizer

    @property
    def collate_fn(self) -> InstructionCollator:  # type: ignore[override]
        return InstructionCollator(self.tokenizer.eos_id, self.mask_prompt)

    @property
    def sample_examples(self) -> list[Example]:
        """The fixed validation examples whose prompts the sample callback answers."""
        self._require_setup()
        return self.val_examples[: self.num_sample_prompts]

    @property
    def default_prompt(self) -> str:
        """The first fixed validation prompt, formatted (or the bare template before setup)."""
        if self.val_examples:
            first = self.val_examples[0]
            return self.prompt_template.format(first.instruction, first.input)
        return self.prompt_template.format(self.instruction or "", "")

    def _file(self, download: bool) -> Path:
        if self.path is not None:
            return Path(self.path).expanduser()
        return book_instructions_path(self.data_dir, self.cache_dir, download=download)

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Download the book's examples if they are found nowhere (Lightning: once per node)."""
        self._file(download=True)

    def setup(self, stage: str | None = None) -> None:
        """Read and check every example, split them, tokenize, and build the datasets."""
        if self.train_dataset is not None:
            return
        path = self._file(download=False)
        examples = load_examples(path, self.fields)
        train, val, test = split_examples(examples, self.split_seed, what=str(path))
        tok = self.tokenizer
        encoded = [
            encode_examples(part, self.prompt_template, tok, self.max_length, str(path))
            for part in (train, val, test)
        ]
        if self.drop_last and len(train) < self.batch_size:
            raise UserError(
                f"The training split has {len(train)} examples, fewer than batch_size="
                f"{self.batch_size}, so with drop_last an epoch has no batch; use a smaller "
                "batch_size or more examples, or set data.drop_last=false."
            )
        self.train_examples, self.val_examples, self.test_examples = train, val, test
        self.val_dataset = InstructionDataset(encoded[1])
        self.test_dataset = InstructionDataset(encoded[2])
        self.train_sampler = EpochShuffleSampler(len(train), seed=self.seed, shuffle=self.shuffle)
        self.train_dataset = InstructionDataset(encoded[0])
        self._apply_resume()

    @property
    def tokens_train(self) -> int:
        """Input tokens in the training split, padding not counted (after ``setup``)."""
        self._require_setup()
        return self.train_dataset.num_tokens

    @property
    def tokens_val(self) -> int:
        """Input tokens in the validation split, padding not counted (after ``setup``)."""
        self._require_setup()
        return self.val_dataset.num_tokens

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        return DataLoader(
            self.test_dataset, shuffle=False, drop_last=False, **self._loader_kwargs()
        )
