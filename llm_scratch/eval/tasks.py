"""Multiple-choice tasks from local JSON Lines files: HellaSwag's format or a plain one.

Each line of a task file is one example, in either format (a file may mix them):

- plain: ``{"context": "...", "choices": ["...", "..."], "label": 1}``;
- HellaSwag's (``hellaswag_val.jsonl``): ``activity_label``, ``ctx_a``, ``ctx_b`` (or ``ctx``),
  ``endings`` and ``label``, turned into a context and choices exactly as lm-evaluation-harness's
  ``hellaswag`` task does (its ``preprocess``: ``[title]`` markers and bracketed artifacts
  removed), so the two score the same text.

A choice is scored as the continuation ``" " + choice`` of its context (the harness's default
``target_delimiter``). Any line that is not such an example is a :class:`UserError` naming the
file and the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_scratch.errors import UserError
from llm_scratch.utils.io import parse_user_json

# the harness's default target_delimiter: what separates a context from each choice
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class Example:
    """One multiple-choice question: the context, its choices and the index of the right one."""

    context: str
    choices: tuple[str, ...]
    label: int
    line: int = field(default=0, compare=False)  # where it is in its file, for errors


@dataclass(frozen=True)
class Task:
    """A task file's examples; ``name`` is the file's name without ``.jsonl``."""

    name: str
    path: Path
    examples: tuple[Example, ...]


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag cleaning (tasks/hellaswag/utils.py, ``preprocess``)."""
    text = text.strip()
    # brackets are artifacts of HellaSwag's WikiHow part
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _label(value: Any, n_choices: int, where: str) -> int:
    # HellaSwag's files hold the label as a number, the Hub's copy as a string ("2")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: 'label' must be the index of the right choice, got {value!r}.")
    if not 0 <= value < n_choices:
        unlabelled = " (a test split without labels cannot be scored)" if value < 0 else ""
        raise UserError(
            f"{where}: label {value} is out of range for its {n_choices} choices "
            f"(0 to {n_choices - 1}){unlabelled}."
        )
    return value


def _choices(value: Any, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise UserError(f"{where}: '{key}' must be a list of strings.")
    if len(value) < 2:
        raise UserError(f"{where}: '{key}' has {len(value)} choice(s); give at least 2.")
    if any(not c.strip() for c in value):
        raise UserError(f"{where}: '{key}' holds an empty choice; every choice needs text.")
    return tuple(value)


def parse_example(record: Any, where: str, line: int = 0) -> Example:
    """The example of one parsed line (``where`` names it in errors: ``file, line n``)."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: not a JSON object.")
    if "endings" in record:  # HellaSwag
        if "ctx_a" in record and "ctx_b" in record:
            ctx = f"{record['ctx_a']} {str(record['ctx_b']).capitalize()}"
        elif "ctx" in record:
            ctx = record["ctx"]
        else:
            raise UserError(f"{where}: a HellaSwag example needs 'ctx_a' and 'ctx_b' (or 'ctx').")
        activity = record.get("activity_label", "")
        if not isinstance(ctx, str) or not isinstance(activity, str):
            raise UserError(f"{where}: HellaSwag's 'ctx' and 'activity_label' must be text.")
        if "label" not in record:
            raise UserError(f"{where}: no 'label' (a test split without labels cannot be scored).")
        choices = _choices(record["endings"], "endings", where)
        context = hellaswag_preprocess(f"{activity}: {ctx}" if activity else ctx)
        choices = tuple(hellaswag_preprocess(c) for c in choices)
        return Example(context, choices, _label(record["label"], len(choices), where), line)
    missing = [k for k in ("context", "choices", "label") if k not in record]
    if missing:
        raise UserError(
            f"{where}: missing {', '.join(repr(k) for k in missing)}; write "
            '{"context": ..., "choices": [...], "label": <index>} or a HellaSwag example.'
        )
    if not isinstance(record["context"], str):
        raise UserError(f"{where}: 'context' must be text.")
    choices = _choices(record["choices"], "choices", where)
    label = _label(record["label"], len(choices), where)
    return Example(record["context"], choices, label, line)


def read_task(path: str | Path, limit: int | None = None) -> Task:
    """The examples of the task file ``path`` (the first ``limit`` of them, if given)."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise UserError(f"limit={limit}: score at least 1 example per task (or null for all).")
    if not path.is_file():
        hint = "" if path.suffix else " (tasks are not downloaded: evaluation is offline)"
        raise UserError(
            f"Task file {path} does not exist{hint}; pass a local JSON Lines file, e.g. "
            "HellaSwag's hellaswag_val.jsonl or one of {context, choices, label} lines."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"Cannot read task file {path}: {error.strerror}.") from error
    except UnicodeDecodeError as error:
        raise UserError(f"Task file {path} is not UTF-8 text ({error.reason}).") from error
    examples = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        record = parse_user_json(line, where, line=True)
        examples.append(parse_example(record, where, n))
        if limit is not None and len(examples) == limit:
            break
    if not examples:
        raise UserError(f"Task file {path} has no examples: write one JSON object per line.")
    name = path.name.removesuffix(".jsonl").removesuffix(".json")
    return Task(name=name, path=path, examples=tuple(examples))


def read_tasks(paths: list[str] | tuple[str, ...], limit: int | None = None) -> list[Task]:
    """Every task file of ``paths``, read (and checked) before any scoring starts; two files of
    the same name are refused (their results would share a key)."""
    if not paths:
        raise UserError("No task files: pass tasks=<file.jsonl>[,<file.jsonl>...].")
    tasks = [read_task(p, limit) for p in paths]
    names = [t.name for t in tasks]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise UserError(
            f"Two task files are named {clash[0]!r}: results are keyed by file name; rename one."
        )
    return tasks
