"""TokenWeightedMean: the token-weighted epoch and validation loss."""

import math

import pytest
import torch

from llm_scratch.train.metrics import TokenWeightedMean


def test_token_weighted_mean():
    metric = TokenWeightedMean()
    metric.update(torch.tensor(2.0), 3)
    metric.update(torch.tensor(4.0, requires_grad=True), 1)
    value = metric.compute()
    assert value.item() == pytest.approx((2.0 * 3 + 4.0 * 1) / 4)
    assert not value.requires_grad
    metric.reset()
    metric.update(torch.tensor(1.5), 8)
    assert metric.compute().item() == pytest.approx(1.5)


def test_nan_propagates():
    metric = TokenWeightedMean()
    metric.update(torch.tensor(1.0), 4)
    metric.update(torch.tensor(float("nan")), 4)
    assert math.isnan(metric.compute().item())
    metric.reset()
    metric.update(torch.tensor(1.0), 4)
    assert metric.compute().item() == pytest.approx(1.0)


def test_update_reads_nothing_back(monkeypatch):
    """An update only adds on the device: no tensor is turned into a Python value."""
    metric = TokenWeightedMean()

    def refuse(*args, **kwargs):
        raise AssertionError("update read a tensor back to the host")

    for name in ("__bool__", "item", "tolist", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    metric.update(torch.tensor(2.0), 3)
    monkeypatch.undo()
    assert metric.compute().item() == pytest.approx(2.0)


def test_sums_are_saved_and_old_state_dicts_still_load():
    """A checkpoint saved mid-epoch carries the epoch's sums; one saved before they were loads."""
    metric = TokenWeightedMean()
    metric.update(torch.tensor(2.0), 3)
    state = metric.state_dict()
    assert set(state) == {"total", "count"}
    restored = TokenWeightedMean()
    restored.load_state_dict(state)
    restored.update(torch.tensor(4.0), 1)
    assert restored.compute().item() == pytest.approx((2.0 * 3 + 4.0) / 4)
    older = TokenWeightedMean()
    older.load_state_dict({}, strict=True)
    older.update(torch.tensor(4.0), 1)
    assert older.compute().item() == pytest.approx(4.0)


# ----------------------------------------------------------------------------- bits per byte


def test_token_byte_lengths_are_the_utf8_length_of_each_token():
    from llm_scratch.data.tokenizers import BPETokenizer, CharTokenizer

    char = CharTokenizer("aé€😀\n")
    assert dict(zip(char.chars, char.token_byte_lengths(), strict=True)) == {
        "\n": 1,
        "a": 1,
        "é": 2,
        "€": 3,
        "😀": 4,
    }
    bpe = BPETokenizer("gpt2")
    lengths = bpe.token_byte_lengths()
    assert len(lengths) == bpe.vocab_size and lengths[bpe.eos_id] == 0
    text = "Héllo wörld — the end.\n"
    ids = bpe.encode(text + "<|endoftext|>" + text)
    # summed over a text's tokens: its UTF-8 bytes; the end-of-text token counts none
    assert sum(lengths[i] for i in ids) == 2 * len(text.encode("utf-8"))


def _tiny_module(tokenizer):
    from llm_scratch.train.module import GPTLightningModule

    torch.manual_seed(0)
    model = {"n_layer": 1, "n_head": 2, "n_embd": 16, "vocab_size": 8, "context_length": 6}
    module = GPTLightningModule(model=model, tokenizer=tokenizer.to_dict())
    module.setup("validate")  # no Trainer: the table comes from the tokenizer described
    return module.eval()


def test_val_bpb_is_the_summed_nats_in_bits_over_the_targets_bytes():
    """By hand on a tiny model: two batches, one a plain window batch and one an instruction
    batch whose masked targets (-100) count neither loss nor bytes; a token of 0 bytes (as
    <|endoftext|>) is left out of both sums."""
    from llm_scratch.data.tokenizers import CharTokenizer

    tokenizer = CharTokenizer("ab é€😀\n")  # 7 characters: ids 0..6
    module = _tiny_module(tokenizer)
    lengths = tokenizer.token_byte_lengths()
    lengths.append(0)  # id 7: a special token of no bytes (the model's vocabulary has 8)
    module.token_byte_lengths = torch.tensor(lengths)
    g = torch.Generator().manual_seed(1)
    x1, y1 = torch.randint(0, 8, (2, 6), generator=g), torch.randint(0, 8, (2, 6), generator=g)
    y1[0, 0] = 7
    x2, y2 = torch.randint(0, 8, (1, 6), generator=g), torch.randint(0, 7, (1, 6), generator=g)
    y2[0, :3] = -100  # the prompt: no loss there
    instruct = {"input_ids": x2, "targets": y2, "num_tokens": 6, "num_targets": 3}
    with torch.no_grad():
        module.validation_step((x1, y1), 0)
        module.validation_step(instruct, 1)
        nats, n_bytes, loss_sum, n = 0.0, 0, 0.0, 0
        for x, y in ((x1, y1), (x2, y2)):
            logp = torch.log_softmax(module.model(x)[0].double(), dim=-1)
            for b in range(y.size(0)):
                for t in range(y.size(1)):
                    target = int(y[b, t])
                    if target < 0:
                        continue
                    loss_sum, n = loss_sum - float(logp[b, t, target]), n + 1
                    if lengths[target] > 0:
                        nats -= float(logp[b, t, target])
                        n_bytes += lengths[target]
    assert n == 15 and n_bytes > 0
    expected = nats / math.log(2) / n_bytes
    assert module.val_bpb.compute().item() == pytest.approx(expected, rel=1e-5)
    # val/loss as before: the token-weighted mean over every unmasked target
    assert module.val_loss.compute().item() == pytest.approx(loss_sum / n, rel=1e-5)


def test_val_bpb_sums_add_across_batches_and_processes():
    """The sums, not the per-batch ratios, are combined: two processes' halves (torchmetrics
    reduces the states by sum under DDP, as merge_state does here) give the whole's figure."""
    import torch.nn.functional as F

    from llm_scratch.train.metrics import BitsPerByte, bpb_sums

    lengths = torch.tensor([1, 2, 3, 0, 4])  # id 3: a special token
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 5, generator=g)
    targets = torch.randint(0, 5, (4, 5), generator=g)
    targets[0, 0], targets[1, 2] = 3, -100

    def update(metric: BitsPerByte, rows: slice) -> None:
        x, y = logits[rows], targets[rows]
        loss = F.cross_entropy(x.flatten(0, 1), y.flatten(), ignore_index=-100)
        metric.update(*bpb_sums(loss, int((y >= 0).sum()), x, y, lengths))

    whole, first, second = BitsPerByte(), BitsPerByte(), BitsPerByte()
    update(whole, slice(None))
    update(first, slice(0, 1))
    update(second, slice(1, None))
    first.merge_state(second)
    token_losses = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
    ).view(4, 5)
    counted = (targets >= 0) & (lengths[targets.clamp(min=0)] > 0)
    by_hand = token_losses[counted].sum() / math.log(2) / lengths[targets[counted]].sum()
    assert whole.compute().item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert first.compute().item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_a_run_logs_val_bpb_beside_val_loss(tmp_path):
    """Characters of ASCII text are a byte each: val/bpb is val/loss in bits, in metrics.csv
    and summary.json alike."""
    import json

    from llm_scratch.train.job import train
    from tests.helpers import CHAR_VERDICT, compose_config, read_metrics

    corpus = tmp_path / "ascii.txt"
    corpus.write_text(
        "".join(f"line {i}: the quick brown fox jumps over it.\n" for i in range(300))
    )
    overrides = [
        *CHAR_VERDICT,
        "data=text",
        f"data.path={corpus}",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "callbacks.text_sampler=null",
    ]
    train(compose_config(overrides, tmp_path / "run"))
    metrics = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    assert metrics["val/bpb"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-5)
    rows = [r for r in read_metrics(tmp_path / "run") if r.get("val/bpb")]
    assert len(rows) == 1
    assert float(rows[0]["val/bpb"]) == pytest.approx(float(rows[0]["val/loss"]) / math.log(2))


def test_the_data_modules_end_of_text_id_counts_no_bytes():
    """Prepared character shards reserve a control character as end of text: the data module
    names its id, and val/bpb counts it as it counts <|endoftext|>: no bytes."""
    from types import SimpleNamespace

    from llm_scratch.data.tokenizers import CharTokenizer
    from llm_scratch.train.module import token_byte_table

    tokenizer = CharTokenizer("ab€\x03")  # ids: \x03 0, a 1, b 2, € 3
    plain = token_byte_table(SimpleNamespace(tokenizer=tokenizer), None)
    assert plain.tolist() == [1, 1, 1, 3]
    shards = SimpleNamespace(tokenizer=tokenizer, eos_id=0)
    assert token_byte_table(shards, None).tolist() == [0, 1, 1, 3]
    described = token_byte_table(None, tokenizer.to_dict())  # no data module: the hparams'
    assert described.tolist() == [1, 1, 1, 3]
