"""The training-health probes: they change nothing that is trained, and log what they claim."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from llm_scratch.errors import UserError
from llm_scratch.model import GPT, GPTConfig
from llm_scratch.train.probes import TrainingProbes, attention_entropy

MODEL = dict(
    vocab_size=17,
    context_length=8,
    n_layer=2,
    n_head=2,
    n_embd=16,
    dropout=0.1,  # dropout draws random numbers: the probes must not shift them
)


class TinyModule(L.LightningModule):
    def __init__(self, **overrides) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = GPT(GPTConfig(**{**MODEL, **overrides}))
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.model(x, y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, MODEL["vocab_size"], (24, MODEL["context_length"] + 1), generator=g)
    return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=4)


class Recorder(L.pytorch.loggers.Logger):
    """Keeps what is logged, by step."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[str, float]] = {}

    name = "recorder"
    version = 0

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.setdefault(int(step), {}).update(metrics)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def _fit(callbacks, steps: int = 6, clip: float | None = None, **overrides):
    L.seed_everything(3)
    module = TinyModule(**overrides)
    recorder = Recorder()
    trainer = L.Trainer(
        max_steps=steps,
        callbacks=callbacks,
        logger=recorder,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        accelerator="cpu",
        gradient_clip_val=clip,
        log_every_n_steps=1,
    )
    trainer.fit(module, _data())
    return module, recorder


@pytest.mark.parametrize("attention", ["fused", "loop"])
def test_losses_are_the_same_to_the_bit_with_probes_on_and_off(attention):
    off, _ = _fit([], attention=attention)
    on, recorder = _fit([TrainingProbes(every_n_steps=2)], attention=attention)
    assert on.losses == off.losses
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            on.model.state_dict().values(), off.model.state_dict().values(), strict=True
        )
    )
    probed = sorted(step for step, row in recorder.rows.items() if "probes/grad_norm" in row)
    assert probed == [2, 4, 6]  # the rows carry the optimizer steps done, as train/loss's
    row = recorder.rows[2]
    for name in ("grad_norm", "update_ratio", "resid_rms", "attn_entropy"):
        for layer in range(MODEL["n_layer"]):
            assert math.isfinite(row[f"probes/{name}/block{layer}"]), (name, layer)


def test_logged_values_match_a_hand_computation():
    """Every step probed, no dropout: each value against the same quantity computed by hand."""
    probes = TrainingProbes(every_n_steps=1)
    seen = {}

    class Hand(L.Callback):
        """Records, for the first step, what the probes should report."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx:
                return
            x, _ = batch
            blocks = pl_module.model.transformer.h
            with torch.no_grad():
                h = pl_module.model.transformer.wte(x) + pl_module.model.transformer.wpe(
                    torch.arange(x.size(1))
                )
                for layer, block in enumerate(blocks):
                    a = block.ln_1(h)  # pre-norm: attention sees the normalised stream
                    q, k, _ = block.attn.c_attn(a).split(block.attn.n_embd, dim=2)
                    B, T, _ = a.shape
                    hd = block.attn.head_dim
                    q = q.view(B, T, -1, hd).transpose(1, 2)
                    k = k.view(B, T, -1, hd).transpose(1, 2)
                    p = torch.softmax(
                        (q @ k.transpose(-2, -1) / math.sqrt(hd)).masked_fill(
                            torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")
                        ),
                        -1,
                    )
                    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean()
                    seen[f"probes/attn_entropy/block{layer}"] = entropy.item()
                    h = block(h)
                    seen[f"probes/resid_rms/block{layer}"] = h.pow(2).mean().sqrt().item()
            seen["before"] = [[p.detach().clone() for p in b.parameters()] for b in blocks]

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step:
                return
            blocks = pl_module.model.transformer.h
            for layer, block in enumerate(blocks):
                norm = torch.cat([p.grad.flatten() for p in block.parameters()]).norm()
                seen[f"probes/grad_norm/block{layer}"] = norm.item()
            every = torch.cat([p.grad.flatten() for p in pl_module.parameters()])
            seen["probes/grad_norm"] = every.norm().item()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx:
                return
            for layer, block in enumerate(pl_module.model.transformer.h):
                after = torch.cat([p.detach().flatten() for p in block.parameters()])
                before = torch.cat([p.flatten() for p in seen["before"][layer]])
                ratio = (after - before).norm() / before.norm()
                seen[f"probes/update_ratio/block{layer}"] = ratio.item()

    # Hand runs first, so its on_train_batch_end sees the weights after the same step
    _, recorder = _fit([Hand(), probes], steps=1, clip=1e-3, dropout=0.0)
    row = recorder.rows[1]
    for key, value in seen.items():
        if key != "before":
            assert row[key] == pytest.approx(value, rel=1e-4), key
    assert row["probes/clipped"] == 1.0  # a norm above 1e-3 is clipped
    _, unclipped = _fit([TrainingProbes(every_n_steps=1)], steps=1, clip=None, dropout=0.0)
    assert unclipped.rows[1]["probes/clipped"] == 0.0


def test_attention_entropy_of_uniform_attention_is_log_of_the_positions():
    """Zero queries and keys: every position attends uniformly to itself and those before it."""
    model = GPT(GPTConfig(**{**MODEL, "dropout": 0.0}))
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        attn.c_attn.weight.zero_()
        if attn.c_attn.bias is not None:
            attn.c_attn.bias.zero_()
    T = 5
    expected = sum(math.log(t + 1) for t in range(T)) / T
    got = attention_entropy(attn, torch.randn(3, T, MODEL["n_embd"]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_every_n_steps_out_of_range_is_one_line(bad):
    with pytest.raises(UserError, match="callbacks.training_probes.every_n_steps"):
        TrainingProbes(every_n_steps=bad)
