"""The models, in plain PyTorch (no Lightning, Hydra or OmegaConf): our GPT, the Hugging Face
GPT-2 backend, GPT-2 weight conversion, and ``build_model`` from a config dict."""

from llm_scratch.model.config import PRESETS, GPTConfig

# Where each torch-backed name lives. They are imported on first use (PEP 562): composing a
# config (--help, a sweep's launcher) reads GPTConfig and PRESETS only, and needs no torch.
_LAZY = {
    "GPT": "llm_scratch.model.gpt",
    "KVCache": "llm_scratch.model.attention",
    "LanguageModel": "llm_scratch.model.base",
    "build_model": "llm_scratch.model.factory",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GPT", "GPTConfig", "KVCache", "LanguageModel", "PRESETS", "build_model"]
