"""The one place that turns a model config dict into (config, model).

The dict is the ``model`` hyperparameter stored in every checkpoint (``asdict`` of the config
the run was trained with): a :class:`GPTConfig`'s fields, or an ``HFGPT2Config``'s, marked by
``backend: hf_gpt2``. Training (``GPTLightningModule``) and loading a checkpoint without
Lightning (``llm_scratch.checkpoint.load_model``) both build their model here, so the two can
never disagree about what a dict means.
"""

from __future__ import annotations

from typing import Any

from llm_scratch.model.base import LanguageModel
from llm_scratch.model.config import GPTConfig
from llm_scratch.model.gpt import GPT
from llm_scratch.model.hf_backend import HF_BACKEND, HFGPT2, HFGPT2Config


def build_model(model: dict[str, Any]) -> tuple[GPTConfig | HFGPT2Config, LanguageModel]:
    """(config, freshly initialised model) for the model dict ``model``.

    ``backend: hf_gpt2`` gives an ``HFGPT2Config`` and the ``HFGPT2`` adapter around Hugging
    Face's GPT2LMHeadModel (transformers is needed then, and imported only then); any other dict
    a :class:`GPTConfig` and our :class:`GPT`. A field a config refuses raises its
    ``ValueError`` (an unknown field a ``TypeError``).
    """
    if model.get("backend") == HF_BACKEND:
        hf_config = HFGPT2Config(**model)
        return hf_config, HFGPT2(hf_config)
    config = GPTConfig(**model)
    return config, GPT(config)
