"""GPTConfig: every architectural switch of the model, validated, plus named presets."""

from dataclasses import dataclass, field, fields
from typing import Any

from llm_scratch.constraints import check

LAYER_INITS = ("fresh", "clone")
ATTENTIONS = ("fused", "loop")
# GELU as GPT-2 computes it (its tanh approximation) or exactly, with erf (nanoGPT, nn.GELU())
GELUS = ("tanh", "exact")
# GPT-2's initialisation, or PyTorch's defaults for every layer (what the book's GPTModel leaves)
WEIGHT_INITS = ("gpt2", "pytorch")

# Named model sizes: GPTConfig.from_name(name), and model=<name> in training (where the vocabulary
# comes from the tokenizer and the context from the data; llm_scratch/train/config_store.py).
# Fields left out keep the GPTConfig defaults; dropout is GPT-2's 0.1 (0.0 is the dataclass
# default, for a bare GPTConfig()); the small presets leave vocab_size to the data set, as
# minGPT does.
PRESETS: dict[str, dict[str, Any]] = {
    # The four OpenAI GPT-2 checkpoints.
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, context_length=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, context_length=1024, vocab_size=50257),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, context_length=1024, vocab_size=50257),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, context_length=1024, vocab_size=50257),
    # minGPT's small models, trainable on a CPU.
    "gpt-mini": dict(n_layer=6, n_head=6, n_embd=192),
    "gpt-micro": dict(n_layer=4, n_head=4, n_embd=128),
    "gpt-nano": dict(n_layer=3, n_head=3, n_embd=48),
    # nanoGPT's "baby GPT" from the Shakespeare-char example.
    "baby": dict(n_layer=6, n_head=6, n_embd=384, context_length=256, dropout=0.2),
}
for _preset in PRESETS.values():
    _preset.setdefault("dropout", 0.1)


@dataclass
class GPTConfig:
    # The ranges (metadata=check(...), llm_scratch/constraints.py) are what the config is
    # checked against before a run starts; __post_init__ holds objects built in code to them.
    vocab_size: int = field(default=50257, metadata=check(ge=1))
    # maximum sequence length (nanoGPT's block_size)
    context_length: int = field(default=1024, metadata=check(ge=1))
    n_layer: int = field(default=12, metadata=check(ge=1))
    n_head: int = field(default=12, metadata=check(ge=1))
    n_embd: int = field(default=768, metadata=check(ge=1))
    dropout: float = field(default=0.0, metadata=check(ge=0, lt=1))
    bias: bool = True  # biases in Linear layers and LayerNorms
    # the q/k/v projection's bias alone (the book's qkv_bias); None: the same as bias
    qkv_bias: bool | None = None
    pre_norm: bool = True  # True: GPT-2 pre-norm; False: original Transformer post-norm
    # "fresh": init each block on its own; "clone": deepcopy one block
    layer_init: str = field(default="fresh", metadata=check(choices=LAYER_INITS))
    # "fused": one SDPA call for all heads; "loop": per-head Python loop
    attention: str = field(default="fused", metadata=check(choices=ATTENTIONS))
    tie_weights: bool = True  # share the token embedding with the output head
    # "tanh": GPT-2's approximation (HF gelu_new); "exact": erf (HF gelu)
    gelu: str = field(default="tanh", metadata=check(choices=GELUS))
    # "gpt2": N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layer); "pytorch":
    # each layer's own default (embeddings N(0, 1), Linear uniform within 1/sqrt(fan_in))
    weight_init: str = field(default="gpt2", metadata=check(choices=WEIGHT_INITS))

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            # bool is a subclass of int, but n_layer=True is certainly a mistake
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"GPTConfig.{name}={value!r} is not valid: it must be a positive integer"
                )
        d = self.dropout
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0.0 <= d < 1.0:
            raise ValueError(
                f"GPTConfig.dropout={d!r} is out of range: it must be a number with 0 <= dropout < 1"
            )
        for name in ("bias", "pre_norm", "tie_weights"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"GPTConfig.{name}={value!r} is not a bool: use True or False")
        if self.qkv_bias is not None and not isinstance(self.qkv_bias, bool):
            raise ValueError(
                f"GPTConfig.qkv_bias={self.qkv_bias!r} is not a bool: use True, False or None "
                "(None: the same as bias)"
            )
        for name, choices in (
            ("layer_init", LAYER_INITS),
            ("attention", ATTENTIONS),
            ("gelu", GELUS),
            ("weight_init", WEIGHT_INITS),
        ):
            value = getattr(self, name)
            if value not in choices:
                allowed = ", ".join(repr(c) for c in choices)
                raise ValueError(
                    f"GPTConfig.{name}={value!r} is not a known choice: use one of {allowed}"
                )
        if self.n_embd % self.n_head != 0:
            lower = self.n_embd // self.n_head * self.n_head
            upper = lower + self.n_head
            example = f"{lower} or {upper}" if lower > 0 else f"{upper}"
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                f"choose n_embd as a multiple of n_head (e.g. {example})"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def attn_qkv_bias(self) -> bool:
        """Whether the q/k/v projection (c_attn) has a bias: qkv_bias, or bias when it is None."""
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "GPTConfig":
        """Build a preset by name (see PRESETS), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(
                f"unknown model preset {name!r}: known presets are {', '.join(PRESETS)}"
            )
        known = [f.name for f in fields(cls)]
        for key in overrides:
            if key not in known:
                raise ValueError(
                    f"unknown GPTConfig field {key!r} in overrides for preset {name!r}: "
                    f"known fields are {', '.join(known)}"
                )
        return cls(**{**PRESETS[name], **overrides})


# The value of ``backend`` in an HFGPT2Config's dict; our GPT's dict has no ``backend`` key.
HF_BACKEND = "hf_gpt2"
LABEL_SHIFTS = ("single", "double")


@dataclass
class HFGPT2Config:
    """A ``transformers.GPT2Config`` in our field names (pre-norm, biases, gelu_new, as GPT-2).

    ``backend`` marks the dict in checkpoints' hyperparameters; it is not set by hand.
    """

    vocab_size: int = 50257
    context_length: int = 1024  # GPT-2's n_positions
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.1  # resid_pdrop, embd_pdrop and attn_pdrop
    tie_weights: bool = True  # tie_word_embeddings
    label_shift: str = "single"  # "single": labels handled correctly; "double": shifted twice
    backend: str = HF_BACKEND

    def __post_init__(self) -> None:
        shared = {f.name for f in fields(GPTConfig)}
        try:  # the shared fields obey GPTConfig's rules
            GPTConfig(**{k: v for k, v in self.__dict__.items() if k in shared})
        except ValueError as error:
            raise ValueError(str(error).replace("GPTConfig.", "HFGPT2Config.")) from None
        if self.label_shift not in LABEL_SHIFTS:
            raise ValueError(
                f"HFGPT2Config.label_shift={self.label_shift!r} is not a known choice: use "
                f"'single' (correct) or 'double' (the double-shift mistake)"
            )
        if self.backend != HF_BACKEND:
            raise ValueError(f"HFGPT2Config.backend={self.backend!r} must be {HF_BACKEND!r}")
