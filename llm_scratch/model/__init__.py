"""The GPT model, written out in plain PyTorch (no Lightning, no Hydra)."""

from llm_scratch.model.attention import KVCache
from llm_scratch.model.config import PRESETS, GPTConfig
from llm_scratch.model.gpt import GPT

__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS"]
