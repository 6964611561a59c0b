"""The models, in plain PyTorch (no Lightning, Hydra or OmegaConf): our GPT, the Hugging Face
GPT-2 backend, GPT-2 weight conversion, and ``build_model`` from a config dict."""

from llm_scratch.model.attention import KVCache
from llm_scratch.model.base import LanguageModel
from llm_scratch.model.config import PRESETS, GPTConfig
from llm_scratch.model.factory import build_model
from llm_scratch.model.gpt import GPT

__all__ = ["GPT", "GPTConfig", "KVCache", "LanguageModel", "PRESETS", "build_model"]
