"""GPT-2 interop: Hugging Face weights in and out, fine-tuning from them, and the HF backend."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from llm_scratch.errors import UserError
from llm_scratch.model import GPT, GPTConfig
from llm_scratch.train.job import train
from llm_scratch.train.module import GPTLightningModule
from tests.helpers import FAST, compose_config, read_metrics

transformers = pytest.importorskip("transformers")

TINY = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    """A randomly initialised GPT-2 (2 layers, 32 wide, GPT-2's vocabulary), saved to disk."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY))
    with torch.no_grad():  # LayerNorms away from their 1/0 init, so a mixed-up one would show
        for name, p in model.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("attention", ["fused", "loop"])
def test_from_hf_logits_equal_gpt2lmheadmodel(tiny_gpt2_dir, attention):
    hf = transformers.GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).eval()
    ours = GPT.from_hf(tiny_gpt2_dir, attention=attention).eval()
    cfg = ours.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.context_length, cfg.vocab_size) == (
        2,
        2,
        32,
        64,
        50257,
    )
    assert cfg.pre_norm and cfg.bias and cfg.tie_weights and cfg.attention == attention
    assert ours.lm_head.weight is ours.transformer.wte.weight
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert max_diff(ours(idx)[0], hf(idx).logits) < 1e-4


def test_from_hf_crops_the_context_and_keeps_the_architecture(tiny_gpt2_dir):
    hf = transformers.GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).eval()
    ours = GPT.from_hf(hf, context_length=16, dropout=0.0).eval()  # a model object works too
    assert ours.config.context_length == 16 and ours.transformer.wpe.weight.shape[0] == 16
    idx = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        assert max_diff(ours(idx)[0], hf(idx).logits) < 1e-4
    with pytest.raises(ValueError, match="n_layer cannot be overridden"):
        GPT.from_hf(hf, n_layer=4)
    with pytest.raises(ValueError, match="longer than the checkpoint's n_positions=64"):
        GPT.from_hf(hf, context_length=128)
    with pytest.raises(ValueError, match="cannot load a GPT-2 checkpoint"):
        GPT.from_hf(tiny_gpt2_dir / "missing")


@pytest.mark.parametrize("gelu", ["tanh", "exact"])
@pytest.mark.parametrize("tie", [True, False])
def test_save_hf_loads_in_transformers_with_equal_logits(tmp_path, tie, gelu):
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=70,
        context_length=24,
        n_layer=2,
        n_head=4,
        n_embd=32,
        tie_weights=tie,
        gelu=gelu,
    )
    ours = GPT(config).eval()
    ours.save_hf(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert hf.config.tie_word_embeddings is tie
    assert hf.config.activation_function == {"tanh": "gelu_new", "exact": "gelu"}[gelu]
    assert (hf.lm_head.weight is hf.transformer.wte.weight) is tie
    idx = torch.randint(0, 70, (3, 24))
    with torch.no_grad():
        assert max_diff(ours(idx)[0], hf(idx).logits) < 1e-4
    # and back again: the same tensors
    back = GPT.from_hf(tmp_path, dropout=config.dropout)
    assert back.config == config
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_post_norm_and_bias_free_models_cannot_be_exported(tmp_path):
    small = dict(vocab_size=10, context_length=8, n_layer=1, n_head=2, n_embd=8)
    with pytest.raises(ValueError, match=r"post-norm .*cannot be written as GPT-2") as error:
        GPT(GPTConfig(**small, pre_norm=False)).save_hf(tmp_path)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"bias=False.*cannot be written as GPT-2"):
        GPT(GPTConfig(**small, bias=False)).save_hf(tmp_path)
    with pytest.raises(ValueError, match=r"qkv_bias=False.*cannot be written as GPT-2"):
        GPT(GPTConfig(**small, qkv_bias=False)).save_hf(tmp_path)
    assert not any(tmp_path.iterdir())


def test_gpt2_weights_load_into_a_model_with_qkv_bias_true_but_not_false(tiny_gpt2_dir):
    from llm_scratch.model.hf import load_hf_weights

    config = GPT.from_hf(tiny_gpt2_dir).config
    # qkv_bias=True says what qkv_bias=None (the same as bias=True) says: GPT-2's layout
    load_hf_weights(GPT(dataclasses.replace(config, qkv_bias=True)), tiny_gpt2_dir)
    with pytest.raises(ValueError, match=r"does not match the GPT-2 checkpoint: qkv_bias=False"):
        load_hf_weights(GPT(dataclasses.replace(config, qkv_bias=False)), tiny_gpt2_dir)


# --- the HF backend's labels --------------------------------------------------------------


def hf_backend_and_twin(label_shift: str):
    """An HF-backend model and our GPT with the same weights."""
    from llm_scratch.model.hf_backend import HFGPT2, HFGPT2Config

    torch.manual_seed(0)
    config = HFGPT2Config(
        vocab_size=65, context_length=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0
    )
    config.label_shift = label_shift
    model = HFGPT2(config).eval()
    twin = GPT.from_hf(model.hf).eval()
    return model, twin


def test_hf_backend_single_shift_loss_equals_our_gpts_loss():
    model, twin = hf_backend_and_twin("single")
    x = torch.randint(0, 65, (4, 33), generator=torch.Generator().manual_seed(2))
    x, y = x[:, :-1], x[:, 1:]  # what the data module gives
    with torch.no_grad():
        logits, loss = model(x, y)
        our_logits, our_loss = twin(x, y)
    assert max_diff(logits, our_logits) < 1e-4
    assert abs(loss.item() - our_loss.item()) < 1e-5
    # the same number as HF's own shift with labels=x, except that one scores T-1 positions
    with torch.no_grad():
        hf_loss = model.hf(input_ids=x, labels=x).loss
    expected = F.cross_entropy(our_logits[:, :-1].reshape(-1, 65), y[:, :-1].reshape(-1))
    assert abs(hf_loss.item() - expected.item()) < 1e-5


def test_hf_backend_double_shift_learns_two_tokens_ahead():
    model, twin = hf_backend_and_twin("double")
    tokens = torch.randint(0, 65, (4, 33), generator=torch.Generator().manual_seed(3))
    x, y = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        _, loss = model(x, y)
        our_logits, next_token_loss = twin(x, y)
    # logits at t are scored against tokens[t + 2] (T-1 positions): predicting two ahead
    two_ahead = F.cross_entropy(our_logits[:, :-1].reshape(-1, 65), tokens[:, 2:].reshape(-1))
    assert abs(loss.item() - two_ahead.item()) < 1e-5
    assert abs(loss.item() - next_token_loss.item()) > 1e-3


def test_hf_backend_has_our_models_interface():
    model, twin = hf_backend_and_twin("single")
    assert model.num_params() == twin.num_params()
    assert model.flops_per_token() == twin.flops_per_token()
    groups = model.optimizer_param_groups(0.1)
    assert sum(p.numel() for g in groups for p in g["params"]) == model.num_params()
    prompt = torch.tensor([[1, 2, 3]])
    greedy = model.generate(prompt, 40, temperature=0.0)  # past the 32-token context
    assert greedy.shape == (1, 43)
    assert torch.equal(greedy, twin.generate(prompt, 40, temperature=0.0))


# --- through the training entry point -----------------------------------------------------


FINETUNE = [
    "data=shakespeare_bpe",
    "data.context_length=32",
    "data.batch_size=2",
    "data.sampling=random",
    "data.samples_per_epoch=6",
    "trainer.max_epochs=-1",
    "trainer.max_steps=3",
    "trainer.limit_val_batches=2",
    "model.dropout=0.0",
    "callbacks.text_sampler.max_new_tokens=5",
    *FAST,  # model=gpt-nano: its sizes are ignored, the checkpoint's architecture wins
]


def test_init_from_fine_tunes_from_the_gpt2_weights(tiny_gpt2_dir, tmp_path, monkeypatch):
    seen = []
    training_step = GPTLightningModule.training_step

    def spy(self, batch, batch_idx):
        if not seen:
            with torch.no_grad():
                seen.append((batch[0].clone(), batch[1].clone(), self.model(batch[0])[0]))
        loss = training_step(self, batch, batch_idx)
        if len(seen) == 1:
            seen.append(loss.detach().clone())
        return loss

    monkeypatch.setattr(GPTLightningModule, "training_step", spy)
    run_dir = tmp_path / "run"
    metrics = train(compose_config([f"init_from={tiny_gpt2_dir}", *FINETUNE], run_dir))

    (x, y, logits), first_loss = seen
    hf = transformers.GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).eval()
    with torch.no_grad():
        hf_logits = hf(x).logits
    assert max_diff(logits, hf_logits) < 1e-4
    hf_loss = F.cross_entropy(hf_logits.reshape(-1, 50257), y.reshape(-1))
    assert abs(first_loss.item() - hf_loss.item()) < 1e-4
    first_logged = float(read_metrics(run_dir)[0]["train/loss"])
    assert abs(first_logged - hf_loss.item()) < 1e-4
    assert "val/loss" in metrics

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert hparams["init_from"] == str(tiny_gpt2_dir)
    assert {k: hparams["model"][k] for k in ("n_layer", "n_embd", "context_length")} == {
        "n_layer": 2,
        "n_embd": 32,
        "context_length": 32,
    }
    trained = ckpt["state_dict"]["model.transformer.h.0.attn.c_attn.weight"]
    assert not torch.allclose(trained, hf.transformer.h[0].attn.c_attn.weight.t())


def test_init_from_refuses_a_vocabulary_or_context_it_cannot_use(tiny_gpt2_dir, tmp_path):
    cfg = compose_config([f"init_from={tiny_gpt2_dir}", "data=shakespeare_char", *FAST], tmp_path)
    with pytest.raises(UserError, match=r"50257-token vocabulary but the data's tokenizer has 65"):
        train(cfg)
    cfg = compose_config(
        [f"init_from={tiny_gpt2_dir}", "data=verdict", "data.context_length=128", *FAST], tmp_path
    )
    with pytest.raises(UserError, match=r"longer than the checkpoint's n_positions=64"):
        train(cfg)
    cfg = compose_config([f"init_from={tmp_path / 'nowhere'}", *FAST], tmp_path)
    with pytest.raises(UserError, match=r"cannot load a GPT-2 checkpoint"):
        train(cfg)


def test_hf_backend_trains_through_the_entry_point_and_samples(tmp_path):
    from llm_scratch.checkpoint import load_model
    from llm_scratch.model.hf_backend import HFGPT2

    run_dir = tmp_path / "run"
    overrides = [
        "data=shakespeare_char",
        "data.context_length=32",
        "data.batch_size=4",
        "data.sampling=random",
        "data.samples_per_epoch=12",
        "trainer.max_epochs=-1",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=2",
        "callbacks.text_sampler.max_new_tokens=10",
        *FAST,
        "model=hf_gpt2",
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=16",
        "model.label_shift=double",
    ]
    metrics = train(compose_config(overrides, run_dir))
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    assert (run_dir / "samples.jsonl").read_text().count("\n") == 1
    model, tokenizer, _ = load_model(run_dir / "checkpoints" / "last.ckpt")
    assert isinstance(model, HFGPT2) and model.config.label_shift == "double"
    assert tokenizer.vocab_size == model.config.vocab_size == 65


def test_init_from_warns_about_the_model_settings_it_ignores(tiny_gpt2_dir, caplog):
    from llm_scratch.model.pretrained import init_from_model_config

    base = {"n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0, "attention": "fused"}
    with caplog.at_level("WARNING"):
        config = init_from_model_config({**base, "qkv_bias": None}, str(tiny_gpt2_dir), 50257, 32)
    assert config.attn_qkv_bias and "ignoring" not in caplog.text  # null: as GPT-2 has it
    with caplog.at_level("WARNING"):
        config = init_from_model_config({**base, "qkv_bias": False}, str(tiny_gpt2_dir), 50257, 32)
    assert config.attn_qkv_bias  # GPT-2's q/k/v bias is kept ...
    assert "ignoring model.qkv_bias=False" in caplog.text  # ... and the user is told
