"""Multiple-choice scoring: the log-likelihood of each choice after its context, in batches.

Each (context, continuation) pair is tokenized as lm-evaluation-harness does (the context's
trailing whitespace moves to the continuation; the continuation's tokens are those of
``context + continuation`` after the context's), so the numbers here are the harness's.

Batches are right-padded: in a causal model a real token attends only to the tokens before
it, so the padding after a row changes none of its logits, and only the continuation's
positions are read (their hidden states alone go through the LM head). A pair longer than the
model's context is cut from the left, as the harness does (the continuation is kept whole and
the context loses its first tokens); such examples are counted. A continuation longer than the
context itself cannot be scored and is refused, naming its task file and line.

Per example, three predictions (the harness's and llm.c's): ``acc``, the choice with the
highest summed log-likelihood; ``acc_norm``, the highest per character of the choice
(HellaSwag's ``acc_norm`` in the harness); ``acc_per_token``, the lowest mean cross-entropy
per token (llm.c's and nanoGPT's HellaSwag "acc_norm"). Standard errors are those of a mean of
0/1 outcomes, ``sd / sqrt(n)`` with the sample sd, as the harness reports them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from llm_scratch.data.tokenizers import Tokenizer
from llm_scratch.errors import UserError
from llm_scratch.eval.tasks import TARGET_DELIMITER, Task

DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class Score:
    """A continuation's log-likelihood (natural log, summed over its tokens), its token count,
    whether greedy decoding would produce it, and whether its context was cut to fit."""

    logprob: float
    n_tokens: int
    greedy: bool
    truncated: bool


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list, list]:
    """(context tokens, continuation tokens) as lm-evaluation-harness's ``TemplateLM`` makes
    them; an empty context is the end-of-text token (a tokenizer without one cannot score it)."""
    if not context:
        if tokenizer.eos_id is None:
            raise UserError(
                "An empty context needs an end-of-text token to condition on, and this "
                "tokenizer (char) has none: give every example a context."
            )
        cont = tokenizer.encode(continuation)
        if cont and cont[0] == tokenizer.eos_id:
            return cont[:1], cont[1:]
        return [tokenizer.eos_id], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def score_tokens(
    model: nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[Score]:
    """The :class:`Score` of each (context tokens, continuation tokens) pair, in order, on the
    model's device; the model is put in eval mode and given its mode back."""
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: score at least 1 sequence at a time.")
    window = model.config.context_length
    rows, conts, cut = [], [], []
    for i, (context, continuation) in enumerate(pairs):
        context, continuation = list(context), list(continuation)
        if not context or not continuation:  # (encode_pair gives an empty context end-of-text)
            raise UserError(
                f"Pair {i + 1} has an empty context or continuation after tokenization."
            )
        if len(continuation) > window:
            raise UserError(
                f"A continuation of {len(continuation)} tokens is longer than the model's "
                f"context of {window}: it cannot be scored; shorten the choice."
            )
        # the last window + 1 tokens: the input is all but the last, the targets all but the first
        rows.append((context + continuation)[-(window + 1) :])
        conts.append(continuation)
        cut.append(len(context) + len(continuation) > window + 1)
    device = model_device(model)
    # longest first (as the harness does): a batch's padding is its rows' length differences
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    scores: list[Score | None] = [None] * len(rows)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                for i, (logprob, greedy) in zip(
                    batch, _score_batch(model, rows, conts, batch, device), strict=True
                ):
                    scores[i] = Score(logprob, len(conts[i]), greedy, cut[i])
    finally:
        model.train(was_training)
    return scores  # type: ignore[return-value]


def _score_batch(
    model: nn.Module, rows: list, conts: list, batch: list[int], device: torch.device
) -> list[tuple[float, bool]]:
    """(summed log-likelihood, greedy) of the continuations of ``rows[i]`` for i in ``batch``."""
    T = max(len(rows[i]) - 1 for i in batch)
    idx = torch.zeros((len(batch), T), dtype=torch.long)
    scored = torch.zeros((len(batch), T), dtype=torch.bool)  # positions whose target is scored
    targets = []
    for b, i in enumerate(batch):
        row, n = rows[i], len(conts[i])
        idx[b, : len(row) - 1] = torch.tensor(row[:-1])
        scored[b, len(row) - 1 - n : len(row) - 1] = True
        targets.extend(row[-n:])
    hidden = model.hidden_states(idx.to(device))  # (B, T, C); padding only after real tokens
    logits = model.lm_head(hidden[scored.to(device)]).float()  # (N, V): scored positions only
    logprobs = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(targets, device=device)
    token_lp = logprobs.gather(1, target[:, None]).squeeze(1)
    token_greedy = logprobs.argmax(dim=-1) == target
    counts = [len(conts[i]) for i in batch]
    return [
        (float(lp.sum()), bool(greedy.all()))
        for lp, greedy in zip(token_lp.split(counts), token_greedy.split(counts), strict=True)
    ]


# ----------------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class TaskResult:
    """A task's accuracies with their standard errors; ``truncated``: examples whose context
    was cut from the left to fit the model's context."""

    name: str
    n: int
    acc: float
    acc_stderr: float | None
    acc_norm: float
    acc_norm_stderr: float | None
    acc_per_token: float
    acc_per_token_stderr: float | None
    truncated: int
    # per example, per choice: the summed log-likelihood (for comparisons and figures)
    logprobs: tuple[tuple[float, ...], ...] = ()

    def to_dict(self) -> dict:
        return {
            "acc": self.acc,
            "acc_stderr": self.acc_stderr,
            "acc_norm": self.acc_norm,
            "acc_norm_stderr": self.acc_norm_stderr,
            "acc_per_token": self.acc_per_token,
            "acc_per_token_stderr": self.acc_per_token_stderr,
            "n": self.n,
            "truncated": self.truncated,
        }


def mean_and_stderr(outcomes: Sequence[float]) -> tuple[float, float | None]:
    """The mean of ``outcomes`` and its standard error (sample sd / sqrt(n)); None for n < 2."""
    values = np.asarray(outcomes, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None
    return mean, float(values.std(ddof=1) / math.sqrt(len(values)))


def encode_task(
    task: Task, tokenizer: Tokenizer, context_length: int | None = None
) -> list[tuple[list, list]]:
    """The (context, continuation) tokens of every choice of every example, in order; a choice
    longer than ``context_length`` (the model's) is refused, naming its line."""
    pairs = []
    for example in task.examples:
        where = f"{task.path}, line {example.line}"
        try:
            for n, choice in enumerate(example.choices):
                pair = encode_pair(tokenizer, example.context, TARGET_DELIMITER + choice)
                if context_length is not None and len(pair[1]) > context_length:
                    raise UserError(
                        f"choice {n} is {len(pair[1])} tokens, longer than the model's context "
                        f"of {context_length}, so it cannot be scored; shorten it, or evaluate "
                        "a model with a longer context"
                    )
                pairs.append(pair)
        except UserError as error:
            raise UserError(f"{where}: {error}") from error
    return pairs


def evaluate_task(
    model: nn.Module,
    tokenizer: Tokenizer,
    task: Task,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pairs: list[tuple[list, list]] | None = None,
) -> TaskResult:
    """Score every choice of every example of ``task`` and return its accuracies; ``pairs``:
    the task already encoded (:func:`encode_task`)."""
    if pairs is None:
        pairs = encode_task(task, tokenizer, model.config.context_length)
    scores = iter(score_tokens(model, pairs, batch_size))
    hits = {"acc": [], "acc_norm": [], "acc_per_token": []}
    logprobs, truncated = [], 0
    for example in task.examples:
        choice_scores = [next(scores) for _ in example.choices]
        lls = np.array([s.logprob for s in choice_scores])
        chars = np.array([len(c) for c in example.choices], dtype=float)
        tokens = np.array([s.n_tokens for s in choice_scores], dtype=float)
        # np.argmax takes the first of equal values, as the harness does
        hits["acc"].append(float(np.argmax(lls) == example.label))
        hits["acc_norm"].append(float(np.argmax(lls / chars) == example.label))
        hits["acc_per_token"].append(float(np.argmax(lls / tokens) == example.label))
        truncated += any(s.truncated for s in choice_scores)
        logprobs.append(tuple(float(x) for x in lls))
    acc, acc_se = mean_and_stderr(hits["acc"])
    norm, norm_se = mean_and_stderr(hits["acc_norm"])
    per_token, per_token_se = mean_and_stderr(hits["acc_per_token"])
    return TaskResult(
        name=task.name,
        n=len(task.examples),
        acc=acc,
        acc_stderr=acc_se,
        acc_norm=norm,
        acc_norm_stderr=norm_se,
        acc_per_token=per_token,
        acc_per_token_stderr=per_token_se,
        truncated=truncated,
        logprobs=tuple(logprobs),
    )
