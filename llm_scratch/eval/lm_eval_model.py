"""Our checkpoints as an lm-evaluation-harness model, registered as ``llm_scratch``.

Importing this module registers the model class with the harness (``pip install -e '.[eval]'``).
The harness's own ``lm_eval`` command does not import plugins (it has no entry points for
models), so run its command line through ours, which registers the model and hands over::

    python -m llm_scratch.eval.lm_eval_cli --model llm_scratch \\
        --model_args ckpt_path=<run dir or .ckpt> --tasks <task> --include_path <dir>

In Python, after ``import llm_scratch.eval.lm_eval_model``,
``lm_eval.simple_evaluate(model="llm_scratch", model_args="ckpt_path=...")`` works, and so does
``simple_evaluate(model=LLMScratchLM(model=..., tokenizer=...))`` for a model in memory.

Log-likelihoods come from :func:`llm_scratch.eval.scorer.score_tokens`, the same code as
``training/evaluate.py``, so the two agree on the same text.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import lm_eval.models  # noqa: F401 - see below
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn

from llm_scratch.checkpoint import load_model, resolve_checkpoint
from llm_scratch.data.instruct import left_pad
from llm_scratch.data.tokenizers import Tokenizer
from llm_scratch.errors import UserError
from llm_scratch.eval.scorer import DEFAULT_BATCH_SIZE, encode_pair, model_device, score_tokens
from llm_scratch.sample import resolve_device

# (lm_eval.models is imported above because recent versions register the harness's own models
# only on the first lookup in an empty registry: ours alone in it would hide "hf" and the rest)
log = logging.getLogger(__name__)
NAME = "llm_scratch"
DEFAULT_MAX_GEN_TOKS = 256


def _batch_size(value: Any) -> int:
    """The harness's batch_size: an int, or "auto"/"auto:N" (taken as our default)."""
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise UserError(f"batch_size={value!r}: give a number of sequences, or auto.") from None
    if size < 1:
        raise UserError(f"batch_size={size}: score at least 1 sequence at a time.")
    return size


@register_model(NAME)
class LLMScratchLM(LM):
    """A checkpoint of ours (``ckpt_path``: a run directory, a .ckpt file or ``last``), or a
    ``model`` and ``tokenizer`` already in memory, behind the harness's ``LM`` interface."""

    def __init__(
        self,
        ckpt_path: str | None = None,
        model: nn.Module | None = None,
        tokenizer: Tokenizer | None = None,
        device: str | None = "auto",
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        seed: int = 1234,
    ) -> None:
        super().__init__()
        if (ckpt_path is None) == (model is None):
            raise UserError(
                "Give the llm_scratch model either ckpt_path=<run dir or .ckpt> or a model "
                "and its tokenizer."
            )
        if model is None:
            # the harness passes device=None, or "cuda" from older command lines' default
            name = "auto" if device in (None, "") else str(device)
            if name.startswith("cuda") and not torch.cuda.is_available():
                log.warning("device=%s but torch sees no CUDA GPU: evaluating on the CPU", name)
                name = "cpu"
            path = resolve_checkpoint(
                str(ckpt_path), "sample", os.environ.get("LLM_SCRATCH_LOG_DIR", "outputs")
            )
            model, tokenizer, _ = load_model(path, device=resolve_device(name))
        elif tokenizer is None:
            raise UserError("A model given in memory needs its tokenizer too (tokenizer=...).")
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = _batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)

    # --------------------------------------------------------------------- what the harness reads
    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def max_length(self) -> int:
        return self.model.config.context_length

    @property
    def eot_token_id(self) -> int | None:
        return self.tok.eos_id

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    def tok_encode(self, string: str, **kwargs: Any) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.tok.decode(tokens)

    def _prefix_token(self) -> int:
        """What an empty context or a document's first token is conditioned on: end-of-text."""
        if self.tok.eos_id is None:
            raise UserError(
                "This needs an end-of-text token to condition the first token on, and the "
                "checkpoint's tokenizer (char) has none: use tasks whose contexts are not empty."
            )
        return self.tok.eos_id

    # --------------------------------------------------------------------------- the requests
    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log-likelihood, greedy) of each request's continuation after its context."""
        keys = [tuple(req.args) for req in requests]
        pairs = [encode_pair(self.tok, context, continuation) for context, continuation in keys]
        scores = score_tokens(self.model, pairs, self.batch_size)
        out = []
        for key, score in zip(keys, scores, strict=True):
            answer = (score.logprob, score.greedy)
            self.cache_hook.add_partial("loglikelihood", key, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Each text's whole log-likelihood, its first token conditioned on end-of-text, in
        windows of the model's context (each token predicted once, with the most context)."""
        owners, windows = [], []
        for n, req in enumerate(requests):
            (text,) = req.args
            tokens = self.tok_encode(text)
            if not tokens:
                continue
            for window in get_rolling_token_windows(
                tokens, self._prefix_token(), self.max_length, 1
            ):
                windows.append(make_disjoint_window(window))
                owners.append(n)
        totals = [0.0] * len(requests)
        for n, score in zip(
            owners, score_tokens(self.model, windows, self.batch_size), strict=True
        ):
            totals[n] += score.logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", tuple(req.args), total)
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Each context's continuation, greedy unless ``do_sample``/``temperature`` ask for
        sampling, cut at the first ``until`` string (and at end-of-text)."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # one generation setting per batch
        for n, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(n)
        for members in groups.values():
            kwargs = dict(requests[members[0]].args[1] or {})
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                texts = self._generate([requests[n].args[0] for n in batch], kwargs)
                for n, text in zip(batch, texts, strict=True):
                    self.cache_hook.add_partial("generate_until", tuple(requests[n].args), text)
                    out[n] = text
        return out  # type: ignore[return-value]

    def _generate(self, contexts: list[str], kwargs: dict[str, Any]) -> list[str]:
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.get("max_gen_toks", kwargs.get("max_new_tokens", self.max_gen_toks)))
        temperature = float(kwargs.get("temperature", 0.0) or 0.0)
        if not kwargs.get("do_sample", temperature > 0):
            temperature = 0.0
        rows = [self.tok_encode(c) or [self._prefix_token()] for c in contexts]
        eos = self.tok.eos_id
        idx, mask = left_pad(rows, pad_id=eos if eos is not None else 0)
        device = self.device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        try:
            generated = self.model.generate(
                idx.to(device),
                max_new,
                temperature=temperature,
                top_k=kwargs.get("top_k"),
                top_p=kwargs.get("top_p"),
                eos_id=eos,
                generator=generator,
                attention_mask=mask.to(device),
            )
        except ValueError as error:
            raise UserError(f"generate_until: {error}") from error
        texts = []
        for row in generated[:, idx.size(1) :].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            text = self.tok_decode(row)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            texts.append(text)
        return texts
