"""llm_scratch: train GPT models from scratch and run controlled ablations on them."""

__version__ = "0.1.0"
