"""Tests for llm_scratch.model: tiny models on the CPU, real numbers checked."""

import dataclasses
import itertools
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from llm_scratch.model import GPT, PRESETS, GPTConfig, KVCache

GPT2_SMALL_PARAMS = 124_439_808


def tiny_config(**overrides) -> GPTConfig:
    fields = dict(vocab_size=32, context_length=16, n_layer=2, n_head=2, n_embd=16)
    return GPTConfig(**{**fields, **overrides})


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


def reference_greedy(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding written the obvious way: full forward on the cropped window."""
    ctx = model.config.context_length
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -ctx:])
            idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(n_embd=100, n_head=3), r"n_embd=100 is not divisible by n_head=3.*99 or 102"),
        (dict(attention="flash"), r"attention='flash'.*'fused', 'loop'"),
        (dict(layer_init="copy"), r"layer_init='copy'.*'fresh', 'clone'"),
        (dict(n_layer=-1), r"n_layer=-1.*positive integer"),
        (dict(vocab_size=0), r"vocab_size=0.*positive integer"),
        (dict(n_head=2.0), r"n_head=2.0.*positive integer"),
        (dict(dropout=1.0), r"dropout=1.0.*0 <= dropout < 1"),
        (dict(dropout=-0.1), r"dropout=-0.1"),
        (dict(bias="yes"), r"bias='yes' is not a bool"),
        (dict(pre_norm=1), r"pre_norm=1 is not a bool"),
        (dict(qkv_bias="no"), r"qkv_bias='no' is not a bool"),
        (dict(gelu="erf"), r"gelu='erf'.*'tanh', 'exact'"),
        (dict(weight_init="xavier"), r"weight_init='xavier'.*'gpt2', 'pytorch'"),
    ],
)
def test_config_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=r"^GPTConfig\." + pattern):
        GPTConfig(**kwargs)


def test_presets():
    sizes = {
        "gpt2": (12, 12, 768),
        "gpt2-medium": (24, 16, 1024),
        "gpt2-large": (36, 20, 1280),
        "gpt2-xl": (48, 25, 1600),
        "gpt-mini": (6, 6, 192),
        "gpt-micro": (4, 4, 128),
        "gpt-nano": (3, 3, 48),
        "baby": (6, 6, 384),
    }
    assert set(PRESETS) == set(sizes)
    for name, (n_layer, n_head, n_embd) in sizes.items():
        cfg = GPTConfig.from_name(name)
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (n_layer, n_head, n_embd), name
    gpt2 = GPTConfig.from_name("gpt2")
    assert (gpt2.context_length, gpt2.vocab_size) == (1024, 50257)
    baby = GPTConfig.from_name("baby", vocab_size=65)
    assert (baby.dropout, baby.context_length, baby.vocab_size) == (0.2, 256, 65)
    # overrides are validated like any config
    with pytest.raises(ValueError, match="n_embd=48 is not divisible by n_head=5"):
        GPTConfig.from_name("gpt-nano", n_head=5)


def test_unknown_preset_and_override():
    with pytest.raises(ValueError, match=r"unknown model preset 'gpt3'.*gpt2, gpt2-medium.*baby"):
        GPTConfig.from_name("gpt3")
    with pytest.raises(ValueError, match=r"unknown GPTConfig field 'n_layers'.*n_layer"):
        GPTConfig.from_name("gpt2", n_layers=3)


# ---------------------------------------------------------------- size and FLOPs


@pytest.mark.parametrize(
    "name, expected",
    [
        ("gpt2", GPT2_SMALL_PARAMS),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
    ],
)
def test_gpt2_param_counts(name, expected):
    # on the meta device nothing is allocated, so even gpt2-xl is instant
    with torch.device("meta"):
        model = GPT(GPTConfig.from_name(name))
    assert model.num_params() == expected


def test_gpt2_untied_count_non_embedding_and_flops():
    with torch.device("meta"):
        tied = GPT(GPTConfig.from_name("gpt2"))
        untied = GPT(GPTConfig.from_name("gpt2", tie_weights=False))
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() == GPT2_SMALL_PARAMS + 50257 * 768
    n = GPT2_SMALL_PARAMS - 1024 * 768
    assert tied.num_params(non_embedding=True) == n == 123_653_376
    assert tied.flops_per_token() == 6 * n + 12 * 12 * 768 * 1024
    # 1e5 tok/s of gpt2 training on a 312 TFLOP/s device
    assert tied.estimate_mfu(1e5, 312e12) == pytest.approx(tied.flops_per_token() * 1e5 / 312e12)
    with pytest.raises(ValueError, match="peak_flops"):
        tied.estimate_mfu(1e5, 0.0)


def test_gelu_is_gpt2s_tanh_approximation_or_exact():
    """The MLP's activation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) for GPT-2, and
    x Phi(x) with the normal CDF Phi (erf) for gelu="exact", nanoGPT's nn.GELU()."""
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    tanh_form = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    exact = x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    for gelu, expected in (("tanh", tanh_form), ("exact", exact)):
        mlp = tiny_model(gelu=gelu).transformer.h[0].mlp
        assert torch.allclose(mlp.gelu(x), expected, atol=1e-12), gelu
    assert (tanh_form - exact).abs().max() > 1e-4  # so the two cases above are distinguishable


def test_low_precision_attention_runs_in_float32_on_a_cpu_without_amx(monkeypatch):
    """sdpa: bfloat16 q, k, v through the float32 kernel (even under autocast, which would cast
    them back down), the result in bfloat16; with AMX, the bfloat16 kernel itself."""
    from llm_scratch.model import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 32, generator=g).bfloat16().requires_grad_() for _ in "qkv")
    via_fp32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    bf16_kernel = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.equal(via_fp32.bfloat16(), bf16_kernel)  # the two paths are distinguishable

    monkeypatch.setattr(attention, "_cpu_has_amx", lambda: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attention.sdpa(q, k, v, is_causal=True)
    assert y.dtype == torch.bfloat16 and torch.equal(y, via_fp32.bfloat16())
    y.sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()
    monkeypatch.setattr(attention, "_cpu_has_amx", lambda: True)
    assert torch.equal(attention.sdpa(q, k, v, is_causal=True), bf16_kernel)


def test_post_norm_has_no_final_layernorm():
    pre, post = tiny_model(pre_norm=True), tiny_model(pre_norm=False)
    assert "ln_f" in pre.transformer
    assert "ln_f" not in post.transformer
    assert not any(name.startswith("transformer.ln_f") for name in post.state_dict())
    assert pre.num_params() - post.num_params() == 2 * 16  # ln_f weight and bias
    no_bias = tiny_model(pre_norm=False, bias=False)
    assert all(not name.endswith(".bias") for name, _ in no_bias.named_parameters())


@pytest.mark.parametrize("pre_norm", [True, False])
def test_forward_backward_finite(pre_norm):
    model = tiny_model(pre_norm=pre_norm).train()
    idx = torch.randint(0, 32, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, 32)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(math.log(32), abs=0.3)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_loss_is_mean_cross_entropy_ignoring_minus_100():
    model = tiny_model()
    idx = torch.randint(0, 32, (2, 8))
    targets = torch.randint(0, 32, (2, 8))
    targets[0, :3] = -100
    logits, loss = model(idx, targets)
    keep = targets != -100
    logp = torch.log_softmax(logits, dim=-1)
    manual = -logp[keep].gather(1, targets[keep][:, None]).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    assert model(idx)[1] is None


def test_too_long_input_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"T=17 tokens.*context_length=16.*crop"):
        model(torch.zeros(1, 17, dtype=torch.long))
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly the context is fine


# ---------------------------------------------------------------- causality


@pytest.mark.parametrize(
    "pre_norm, layer_init, attention, tie_weights",
    list(itertools.product([True, False], ["fresh", "clone"], ["fused", "loop"], [True, False])),
)
def test_causality(pre_norm, layer_init, attention, tie_weights):
    model = tiny_model(
        pre_norm=pre_norm, layer_init=layer_init, attention=attention, tie_weights=tie_weights
    )
    torch.manual_seed(1)
    idx = torch.randint(0, 32, (2, 12))
    with torch.no_grad():
        base, _ = model(idx)
        for t in (0, 4, 10):
            changed = idx.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1) % 32
            out, _ = model(changed)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
            assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-3


# ---------------------------------------------------------------- fused vs loop


@pytest.mark.parametrize("source, target", [("fused", "loop"), ("loop", "fused")])
@pytest.mark.parametrize("pre_norm", [True, False])
def test_loop_and_fused_agree_through_state_dict(source, target, pre_norm):
    a = tiny_model(seed=3, attention=source, pre_norm=pre_norm, n_head=4, n_embd=32)
    b = tiny_model(seed=4, attention=target, pre_norm=pre_norm, n_head=4, n_embd=32)
    with torch.no_grad():  # larger weights than at init, so attention is far from uniform
        for p in a.parameters():
            p.normal_(0.0, 0.3)
    assert set(a.state_dict()) == set(b.state_dict())
    b.load_state_dict(a.state_dict(), strict=True)
    idx = torch.randint(0, 32, (3, 16))
    logits_a, loss_a = a(idx, idx)
    logits_b, loss_b = b(idx, idx)
    torch.testing.assert_close(logits_b, logits_a, rtol=0, atol=1e-5)
    loss_a.backward()
    loss_b.backward()
    grads_b = dict(b.named_parameters())
    for name, p in a.named_parameters():
        torch.testing.assert_close(grads_b[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("bias, qkv_bias", [(True, False), (False, True)])
def test_qkv_bias_sets_only_the_qkv_projection_and_loop_and_fused_agree(bias, qkv_bias):
    fused = tiny_model(seed=3, attention="fused", bias=bias, qkv_bias=qkv_bias, n_head=4, n_embd=32)
    loop = tiny_model(seed=4, attention="loop", bias=bias, qkv_bias=qkv_bias, n_head=4, n_embd=32)
    attn = fused.transformer.h[0].attn
    assert (attn.c_attn.bias is not None) is qkv_bias
    assert (attn.c_proj.bias is not None) is bias
    assert (fused.transformer.h[0].ln_1.bias is not None) is bias
    with torch.no_grad():
        for p in fused.parameters():
            p.normal_(0.0, 0.3)
    loop.load_state_dict(fused.state_dict(), strict=True)
    idx = torch.randint(0, 32, (3, 16))
    torch.testing.assert_close(loop(idx)[0], fused(idx)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["fused", "loop"])
def test_dropout_active_in_training_only(attention):
    model = tiny_model(attention=attention, dropout=0.5)
    idx = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], model(idx)[0], rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(idx)[0], model(idx)[0])


# ---------------------------------------------------------------- KV cache


@pytest.mark.parametrize("attention", ["fused", "loop"])
@pytest.mark.parametrize("pre_norm", [True, False])
def test_kv_cache_logits_match_full_forward(attention, pre_norm):
    model = tiny_model(attention=attention, pre_norm=pre_norm)
    idx = torch.randint(0, 32, (2, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config.n_layer, model.config.context_length)
        # a prefill of 5, a chunk of 3 (multi-token query after a cache), then single tokens
        chunks = [idx[:, :5], idx[:, 5:8]] + [idx[:, t : t + 1] for t in range(8, 12)]
        pieces = []
        for chunk in chunks:
            pieces.append(model(chunk, kv_cache=cache)[0])
        assert cache.length == 12
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="KV cache holds 12 tokens"):
            model(idx[:, :5], kv_cache=cache)


def test_kv_cache_writes_in_place_and_refuses_overflow():
    cache = KVCache(n_layer=1, max_length=4)
    assert cache.get(0) is None and cache.length == 0
    k1, v1 = torch.randn(2, 3, 3, 5), torch.randn(2, 3, 3, 5)
    first_keys, _ = cache.update(0, k1, v1)
    k2, v2 = torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 5)
    keys, values = cache.update(0, k2, v2)
    assert cache.length == 4
    torch.testing.assert_close(keys, torch.cat([k1, k2], dim=2), rtol=0, atol=0)
    torch.testing.assert_close(values, torch.cat([v1, v2], dim=2), rtol=0, atol=0)
    # views of one buffer allocated at the first update, not a new copy per step
    assert keys.data_ptr() == first_keys.data_ptr()
    with pytest.raises(ValueError, match="max_length=4"):
        cache.update(0, k2, v2)
    assert cache.length == 4


@pytest.fixture(scope="module")
def trained_state():
    """A tiny model trained to continue a random cyclic sequence of 48 tokens.

    A freshly initialised model's greedy output collapses to one repeated token, which would
    hide position bugs; this one produces varied, position-dependent continuations.
    """
    torch.manual_seed(0)
    cfg = tiny_config(n_embd=32)
    model = GPT(cfg)
    seq = torch.randint(0, 32, (48,))
    cyc = torch.cat([seq, seq])
    windows = torch.stack([cyc[i : i + 17] for i in range(48)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(windows[:, :-1], windows[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return cfg, model.state_dict(), cyc


def trained_model(trained_state, attention: str) -> GPT:
    cfg, state, _ = trained_state
    model = GPT(dataclasses.replace(cfg, attention=attention))
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("attention", ["fused", "loop"])
def test_cached_and_uncached_greedy_agree_past_context(trained_state, attention):
    model = trained_model(trained_state, attention)
    cyc = trained_state[2]
    prompts = torch.stack([cyc[0:5], cyc[7:12], cyc[20:25]])  # a batch of 3
    expected = reference_greedy(model, prompts, 40)  # 45 tokens, context 16
    assert len(set(expected[:, 5:].flatten().tolist())) > 10  # not a collapsed sequence
    cached = model.generate(prompts, 40, temperature=0.0, use_cache=True)
    uncached = model.generate(prompts, 40, temperature=0.0, use_cache=False)
    assert cached.shape == (3, 45)
    assert torch.equal(cached[:, :5], prompts)
    assert torch.equal(uncached, expected)
    assert torch.equal(cached, expected)
    single = model.generate(prompts[1:2], 40, temperature=0.0)
    assert torch.equal(single, expected[1:2])


def test_prompt_longer_than_context_is_cropped(trained_state):
    model = trained_model(trained_state, "fused")
    prompt = trained_state[2][None, :20]
    expected = reference_greedy(model, prompt, 6)
    assert torch.equal(model.generate(prompt, 6, temperature=0.0), expected)
    assert torch.equal(model.generate(prompt, 6, temperature=0.0, use_cache=False), expected)


@pytest.mark.parametrize("use_cache", [True, False])
def test_seeded_sampling_is_reproducible(trained_state, use_cache):
    model = trained_model(trained_state, "fused")
    prompt = trained_state[2][None, :5].repeat(4, 1)

    def sample(seed):
        gen = torch.Generator().manual_seed(seed)
        return model.generate(prompt, 30, temperature=1.5, use_cache=use_cache, generator=gen)

    first = sample(0)
    assert torch.equal(first, sample(0))
    assert not torch.equal(first, sample(1))
    assert len({tuple(row) for row in first.tolist()}) > 1  # rows sample independently


def test_top_k_one_and_tiny_top_p_are_greedy(trained_state):
    model = trained_model(trained_state, "loop")
    cyc = trained_state[2]
    prompts = torch.stack([cyc[3:8], cyc[30:35]])
    greedy = model.generate(prompts, 25, temperature=0.0)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(prompts, 25, top_k=1, generator=gen), greedy)
    assert torch.equal(model.generate(prompts, 25, top_p=1e-6, generator=gen), greedy)


def test_top_k_and_top_p_restrict_the_support():
    model = tiny_model(seed=5)
    with torch.no_grad():  # sharper random logits so top-p keeps a proper subset
        model.lm_head.weight.mul_(10)
    prompt = torch.randint(0, 32, (1, 6)).repeat(400, 1)
    logits = model(prompt[:1])[0][0, -1]
    probs = torch.softmax(logits, dim=-1)
    gen = torch.Generator().manual_seed(0)

    top3 = set(torch.topk(logits, 3).indices.tolist())
    drawn = set(model.generate(prompt, 1, top_k=3, generator=gen)[:, -1].tolist())
    assert drawn == top3  # all 3 drawn in 400 tries, nothing else

    p_sorted, order = torch.sort(probs, descending=True)
    n_keep = int((p_sorted.cumsum(0) < 0.6).sum()) + 1  # smallest prefix reaching 0.6
    nucleus = set(order[:n_keep].tolist())
    assert 1 < n_keep < 32
    drawn = set(model.generate(prompt, 1, top_p=0.6, generator=gen)[:, -1].tolist())
    assert drawn == nucleus  # every nucleus token drawn in 400 tries, nothing else


def test_eos_pads_finished_rows_and_stops_early(trained_state):
    model = trained_model(trained_state, "fused")
    cyc = trained_state[2]
    prompts = torch.stack([cyc[0:5], cyc[10:15]])
    free = model.generate(prompts, 30, temperature=0.0)
    eos = int(free[0, 5 + 3])  # row 0 emits it as its 4th new token
    first_hit = []
    for row in free[:, 5:]:
        hits = (row == eos).nonzero()
        first_hit.append(int(hits[0]) if len(hits) else None)
    out = model.generate(prompts, 30, temperature=0.0, eos_id=eos)
    n_new = 30 if None in first_hit else max(first_hit) + 1
    assert out.shape == (2, 5 + n_new)
    for b, hit in enumerate(first_hit):
        stop = n_new if hit is None else hit + 1
        assert torch.equal(out[b, : 5 + stop], free[b, : 5 + stop])
        assert (out[b, 5 + stop :] == eos).all()
    # a single row stops right after its eos
    single = model.generate(prompts[:1], 30, temperature=0.0, eos_id=eos)
    assert torch.equal(single, free[:1, : 5 + first_hit[0] + 1])


def test_generate_restores_mode_and_validates_args():
    model = tiny_model().train()
    idx = torch.zeros(1, 3, dtype=torch.long)
    out = model.generate(idx, 4, temperature=0.0)
    assert out.shape == (1, 7) and model.training
    # generated under inference_mode, returned as an ordinary tensor: it can train the model
    assert not out.is_inference()
    model(out, out)[1].backward()
    out[0, 0] = 1  # and be written to in place
    model.eval()
    model.generate(idx, 2)
    assert not model.training
    assert torch.equal(model.generate(idx, 0), idx)
    for kwargs, pattern in [
        (dict(max_new_tokens=-1), "max_new_tokens=-1"),
        (dict(temperature=-0.5), "temperature=-0.5"),
        (dict(top_k=0), "top_k=0"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(eos_id=32), "eos_id=32"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            model.generate(idx, **{"max_new_tokens": 3, **kwargs})


# ---------------------------------------------------------------- padding masks


def left_pad(rows: list[torch.Tensor], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows left-padded to the longest with random tokens (so padding that leaks shows), and
    the mask: 1 for the real tokens, 0 for the padding."""
    gen = torch.Generator().manual_seed(seed)
    T = max(len(r) for r in rows)
    idx = torch.randint(0, 32, (len(rows), T), generator=gen)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, row in enumerate(rows):
        idx[b, T - len(row) :] = row
        mask[b, T - len(row) :] = 1
    return idx, mask


@pytest.mark.parametrize("attention", ["fused", "loop"])
@pytest.mark.parametrize("pre_norm", [True, False])
def test_left_padded_logits_equal_each_sequence_alone(attention, pre_norm):
    model = tiny_model(attention=attention, pre_norm=pre_norm)
    rows = [torch.randint(0, 32, (n,)) for n in (5, 16, 1, 9)]
    idx, mask = left_pad(rows)
    with torch.no_grad():
        logits, _ = model(idx, attention_mask=mask)
        assert torch.isfinite(logits).all()  # padded queries too: no softmax over nothing
        for b, row in enumerate(rows):
            alone, _ = model(row[None])
            torch.testing.assert_close(logits[b, -len(row) :], alone[0], rtol=0, atol=1e-5)
        # a mask of ones is no mask
        torch.testing.assert_close(
            model(idx, attention_mask=torch.ones_like(mask))[0], model(idx)[0], rtol=0, atol=1e-6
        )
        with pytest.raises(ValueError, match="attention_mask has shape"):
            model(idx, attention_mask=mask[:, 1:])


@pytest.mark.parametrize("attention", ["fused", "loop"])
def test_right_padding_needs_no_mask_at_the_real_positions(attention):
    # Training batches are right-padded: causal attention never sees the padding after a real
    # token and every row starts at position 0, so the masked and unmasked logits agree there.
    model = tiny_model(attention=attention)
    lengths = (4, 11, 7)
    idx = torch.randint(0, 32, (3, 11))
    mask = torch.tensor([[1] * n + [0] * (11 - n) for n in lengths])
    with torch.no_grad():
        masked, _ = model(idx, attention_mask=mask)
        plain, _ = model(idx)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(masked[b, :n], plain[b, :n], rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["fused", "loop"])
def test_kv_cache_with_padding_matches_the_masked_forward(attention):
    model = tiny_model(attention=attention)
    rows = [torch.randint(0, 32, (n,)) for n in (3, 8, 6)]
    prompt, mask = left_pad(rows)  # (3, 8)
    extra = torch.randint(0, 32, (3, 5))  # real tokens fed after the prompt
    full_mask = torch.cat([mask, torch.ones_like(extra)], dim=1)
    with torch.no_grad():
        full, _ = model(torch.cat([prompt, extra], dim=1), attention_mask=full_mask)
        cache = KVCache(model.config.n_layer, model.config.context_length)
        pieces = [model(prompt, attention_mask=mask, kv_cache=cache)[0]]
        pieces.append(model(extra[:, :2], kv_cache=cache)[0])  # several tokens after the cache
        pieces += [model(extra[:, t : t + 1], kv_cache=cache)[0] for t in range(2, 5)]
        assert cache.masked and cache.length == 13
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
        for b, row in enumerate(rows):  # and each row's real positions are the row alone
            alone, _ = model(torch.cat([row, extra[b]])[None])
            n = len(row) + 5
            torch.testing.assert_close(full[b, -n:], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["fused", "loop"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_left_padded_batch_equals_each_prompt_alone(trained_state, attention, use_cache):
    model = trained_model(trained_state, attention)
    cyc = trained_state[2]
    rows = [cyc[0:3], cyc[7:15], cyc[20:26], cyc[40:41]]
    idx, mask = left_pad(rows, seed=1)
    # 30 new tokens: every row runs past the 16-token context, so the window slides (and the
    # cache refills) with padding inside it for the shorter rows
    out = model.generate(idx, 30, temperature=0.0, attention_mask=mask, use_cache=use_cache)
    assert out.shape == (4, 8 + 30)
    assert torch.equal(out[:, :8], idx)
    for b, row in enumerate(rows):
        alone = model.generate(row[None], 30, temperature=0.0, use_cache=use_cache)
        assert len(set(alone[0, len(row) :].tolist())) > 5  # a varied continuation
        assert torch.equal(out[b, 8:], alone[0, len(row) :]), b


def test_generate_refuses_a_right_padded_prompt():
    model = tiny_model()
    idx = torch.randint(0, 32, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="pad on the left"):
        model.generate(idx, 3, attention_mask=mask)


# ---------------------------------------------------------------- initialisation


def test_clone_blocks_identical_fresh_blocks_differ():
    clone = tiny_model(layer_init="clone", n_layer=3)
    fresh = tiny_model(layer_init="fresh", n_layer=3)
    first = dict(clone.transformer.h[0].named_parameters())
    for block in clone.transformer.h[1:]:
        for name, p in block.named_parameters():
            assert torch.equal(p, first[name]), name
            assert p.data_ptr() != first[name].data_ptr()  # copies, not shared tensors
    h = fresh.transformer.h
    for name in ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight"):
        w = [dict(block.named_parameters())[name] for block in h]
        assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2]), name


def test_gpt2_initialisation_statistics():
    n_layer = 8
    model = tiny_model(n_layer=n_layer, n_head=4, n_embd=256, vocab_size=64, context_length=32)
    blocks = model.transformer.h

    def std(name):
        return torch.cat([dict(b.named_parameters())[name].flatten() for b in blocks]).std()

    resid = 0.02 / math.sqrt(2 * n_layer)
    assert std("attn.c_proj.weight").item() == pytest.approx(resid, rel=0.03)
    assert std("mlp.c_proj.weight").item() == pytest.approx(resid, rel=0.03)
    assert std("attn.c_attn.weight").item() == pytest.approx(0.02, rel=0.03)
    assert std("mlp.c_fc.weight").item() == pytest.approx(0.02, rel=0.03)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        elif ".ln_" in name or name.startswith("transformer.ln_f"):
            assert torch.equal(p, torch.ones_like(p)), name


@pytest.mark.parametrize("layer_init", ["fresh", "clone"])
def test_pytorch_weight_init_leaves_every_layer_its_own_default(layer_init):
    """weight_init="pytorch" (the book's GPTModel): embeddings N(0, 1); every Linear weight and
    bias uniform within +-1/sqrt(fan_in) (std bound/sqrt(3)), the residual projections
    unscaled; LayerNorms 1 and 0. GPT-2's init draws none of these."""
    sizes = dict(n_layer=4, n_head=4, n_embd=256, vocab_size=64, context_length=32)
    model = tiny_model(**sizes, weight_init="pytorch", layer_init=layer_init, tie_weights=False)
    assert model.transformer.wte.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(1.0, rel=0.05)
    linears = {"attn.c_attn": 256, "attn.c_proj": 256, "mlp.c_fc": 256, "mlp.c_proj": 1024}
    for name, fan_in in linears.items():
        bound = 1 / math.sqrt(fan_in)
        for block in model.transformer.h:
            layer = block.get_submodule(name)
            assert layer.weight.abs().max().item() <= bound
            assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
            assert layer.bias.abs().max().item() <= bound and layer.bias.abs().max() > 0
    head_bound = 1 / math.sqrt(256)
    assert model.lm_head.weight.std().item() == pytest.approx(head_bound / math.sqrt(3), rel=0.05)
    for name, p in model.named_parameters():
        if ".ln_" in name or name.startswith("transformer.ln_f"):
            expected = 0.0 if name.endswith(".bias") else 1.0
            assert torch.equal(p, torch.full_like(p, expected)), name
    blocks = [b.state_dict() for b in model.transformer.h]
    same = all(torch.equal(blocks[0][k], b[k]) for b in blocks[1:] for k in b)
    assert same == (layer_init == "clone")


# ---------------------------------------------------------------- training


def test_optimizer_param_groups():
    model = tiny_model(tie_weights=True)
    decay, no_decay = model.optimizer_param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert sum(p.numel() for p in decay["params"] + no_decay["params"]) == model.num_params()
    # wte/lm_head, wpe, and per block c_attn, attn.c_proj, c_fc, mlp.c_proj
    assert len(decay["params"]) == 2 + 4 * 2


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_embd=32)).train()
    batch = torch.randint(0, 32, (4, 17))
    x, y = batch[:, :-1], batch[:, 1:]
    opt = torch.optim.AdamW(model.optimizer_param_groups(0.1), lr=1e-2)
    first = None
    for _ in range(300):
        _, loss = model(x, y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.1:
            break
    assert first > 3.0  # about ln(32) at init
    assert loss.item() < 0.1


def test_model_and_checkpoint_loading_need_no_lightning_or_hydra():
    # The model is plain PyTorch, and a trained model loads and samples without the trainer.
    code = (
        "import sys, llm_scratch.model, llm_scratch.checkpoint, llm_scratch.sample; "
        "print([m for m in ('lightning', 'hydra', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
