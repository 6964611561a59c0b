"""Instruction fine-tuning: the examples, template, split and padded batches; the HF backend's
padding mask; a fine-tune end to end (before/after samples, real-token counts, the template in
the checkpoint, init_from a run of ours); answering a prompts file in padded batches."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llm_scratch.checkpoint import load_model, prompt_template, read_checkpoint
from llm_scratch.data import corpora, instruct
from llm_scratch.data.instruct import (
    ALPACA,
    Example,
    InstructionCollator,
    encode_examples,
    load_examples,
)
from llm_scratch.data.instruct_datamodule import InstructDataModule
from llm_scratch.data.tokenizers import BPETokenizer
from llm_scratch.errors import UserError
from llm_scratch.sample import main as sample_main
from llm_scratch.sample import sample_responses
from llm_scratch.train.job import train
from tests.helpers import FAST, compose_config

EOS = 50256


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer("gpt2")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------- template and examples


def test_alpaca_template_is_the_books_format_input():
    # the book's format_input(entry) + "\n\n### Response:\n"
    book = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nEdit the sentence.\n\n### Input:\n"
        "He go home.\n\n### Response:\n"
    )
    assert ALPACA.format("Edit the sentence.", "He go home.") == book
    no_input = ALPACA.format("Name a color.", "")
    assert no_input.endswith("### Instruction:\nName a color.\n\n### Response:\n")
    assert "### Input" not in no_input
    assert instruct.PromptTemplate.from_dict(ALPACA.to_dict()) == ALPACA


def test_book_data_splits_85_5_10_seeded(shared_data_dir):
    dm = InstructDataModule(data_dir=str(shared_data_dir), split_seed=7)
    dm.setup()
    assert (len(dm.train_examples), len(dm.val_examples), len(dm.test_examples)) == (935, 55, 110)
    parts = [dm.train_examples, dm.val_examples, dm.test_examples]
    indices = [e.index for part in parts for e in part]
    assert sorted(indices) == list(range(1100))  # disjoint, and every example used
    again = InstructDataModule(data_dir=str(shared_data_dir), split_seed=7)
    again.setup()
    assert again.val_examples == dm.val_examples
    other = InstructDataModule(data_dir=str(shared_data_dir), split_seed=8)
    other.setup()
    assert other.val_examples != dm.val_examples
    assert dm.sample_examples == dm.val_examples[:3]


def test_book_data_is_downloaded_verified_when_found_nowhere(
    tmp_path, monkeypatch, shared_data_dir
):
    src = shared_data_dir / "instruction-data.json"
    info = dataclasses.replace(instruct.BOOK_INSTRUCTIONS, url=src.as_uri())
    monkeypatch.setattr(instruct, "BOOK_INSTRUCTIONS", info)
    cache = tmp_path / "cache"
    dm = InstructDataModule(data_dir=str(tmp_path / "empty"), cache_dir=str(cache))
    dm.prepare_data()
    assert (cache / "instruction-data.json").read_bytes() == src.read_bytes()
    tampered = tmp_path / "tampered.json"
    tampered.write_text("[]")
    monkeypatch.setattr(
        instruct, "BOOK_INSTRUCTIONS", dataclasses.replace(info, url=tampered.as_uri())
    )
    with pytest.raises(UserError, match="sha256"):
        InstructDataModule(
            data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c2")
        ).prepare_data()
    assert corpora.DATA_DIR_ENV == "LLM_SCRATCH_DATA_DIR"


def test_own_jsonl_with_other_field_names(tmp_path, bpe):
    path = write_jsonl(
        tmp_path / "samsum.jsonl",
        [
            {"id": str(i), "dialogue": f"A: hi {i}\nB: hello", "summary": f"A greets B {i}."}
            for i in range(40)
        ],
    )
    dm = InstructDataModule(
        path=str(path),
        input_field="dialogue",
        output_field="summary",
        instruction="Summarize the dialogue.",
        batch_size=4,
    )
    dm.setup()
    assert (len(dm.train_examples), len(dm.val_examples), len(dm.test_examples)) == (34, 2, 4)
    example = dm.val_examples[0]
    assert example.instruction is None  # the template's default instruction
    prompt = dm.prompt_template.format(example.instruction, example.input)
    assert "### Instruction:\nSummarize the dialogue.\n\n### Input:\nA: hi" in prompt
    batch = next(iter(dm.train_dataloader()))
    ids = batch["input_ids"][0][batch["attention_mask"][0] == 1].tolist()
    assert bpe.decode(ids).startswith("Below is an instruction")


@pytest.mark.parametrize(
    "content, records, pattern",
    [
        ("[{'instruction': 1}]", None, r"bad\.json is not valid JSON \(.* at line 1, column 3\)"),
        (
            None,
            [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "a", "input": ""}],
            r"bad\.json: example 1 has no field 'output' \(its fields: 'instruction', 'input'\); set data\.output_field",
        ),
        (
            None,
            [{"instruction": "a", "input": "", "output": 3}],
            r"bad\.json: example 0's field 'output' is a JSON int, not text",
        ),
        (None, [["a", "b"]], r"bad\.json: example 0 is a JSON list"),
        (
            '{"instruction": "a", "input": "", "output": "b"}\n{"instruction": oops}\n',
            None,
            r"bad\.json is neither a JSON list of examples nor JSON Lines: line 2 \(example 1\)",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_file_and_the_example(tmp_path, content, records, pattern):
    path = tmp_path / "bad.json"
    path.write_text(content if content is not None else json.dumps(records), encoding="utf-8")
    with pytest.raises(UserError, match=pattern) as error:
        load_examples(path)
    assert "\n" not in str(error.value)


def test_a_prompt_longer_than_max_length_is_refused_and_longer_examples_truncated(tmp_path, bpe):
    examples = [
        Example("Say yes.", "", "Yes, " * 30, index=0),
        Example("word " * 40, "", "ok", index=7),
    ]
    with pytest.raises(
        UserError,
        match=r"f\.json: example 7 has a \d+-token prompt, longer than data\.max_length=40",
    ):
        encode_examples(examples, ALPACA, bpe, 40, "f.json")
    (encoded,) = encode_examples(examples[:1], ALPACA, bpe, 40, "f.json")
    assert len(encoded.ids) == 41  # inputs and targets of 40 tokens each, the end-of-text cut
    assert EOS not in encoded.ids.tolist()


# ---------------------------------------------------------------- batches


def test_batches_are_padded_to_their_longest_with_response_only_targets(bpe):
    examples = [
        Example("Name a color.", "", "Blue."),
        Example("Translate to French.", "Thank you very much", "Merci beaucoup."),
    ]
    encoded = encode_examples(examples, ALPACA, bpe, 256, "f")
    batch = InstructionCollator(EOS, mask_prompt=True)(encoded)
    lengths = [len(e.ids) - 1 for e in encoded]
    T = max(lengths)
    assert batch["input_ids"].shape == batch["targets"].shape == (2, T)  # the longest, no more
    for b, e in enumerate(encoded):
        n, p = lengths[b], e.prompt_length
        x, y, m = batch["input_ids"][b], batch["targets"][b], batch["attention_mask"][b]
        assert m[:n].all() and not m[n:].any()
        assert (x[n:] == EOS).all()  # padding: end-of-text ids, never attended (mask 0)
        assert torch.equal(x[:n], torch.as_tensor(e.ids[:-1]))
        assert (y[: p - 1] == -100).all() and (y[n:] == -100).all()
        response = y[p - 1 : n].tolist()  # the response's tokens and one end-of-text
        assert response[-1] == EOS and EOS not in response[:-1]
        assert bpe.decode(response[:-1]) == examples[b].output
    assert batch["num_tokens"] == sum(lengths)
    assert batch["num_targets"] == int((batch["targets"] != -100).sum())
    # mask_prompt=false: the prompt is a target too, the padding still is not
    full = InstructionCollator(EOS, mask_prompt=False)(encoded)
    for b, n in enumerate(lengths):
        assert (full["targets"][b, :n] != -100).all() and (full["targets"][b, n:] == -100).all()
    assert full["num_targets"] == sum(lengths)


def test_the_loss_is_over_the_response_tokens_only(bpe):
    from llm_scratch.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=50257, context_length=128, n_layer=1, n_head=2, n_embd=16)
    ).eval()
    examples = [Example("Name a color.", "", "Blue."), Example("Say hi.", "to Bob", "Hi Bob!")]
    batch = InstructionCollator(EOS)(encode_examples(examples, ALPACA, bpe, 128, "f"))
    with torch.no_grad():
        _, loss = model(batch["input_ids"], batch["targets"])
        scored = []
        for e in encode_examples(examples, ALPACA, bpe, 128, "f"):
            alone, _ = model(torch.as_tensor(e.ids[:-1])[None])
            p = e.prompt_length
            scored.append(
                F.cross_entropy(alone[0, p - 1 :], torch.as_tensor(e.ids[p:]), reduction="none")
            )
    expected = torch.cat(scored).mean()
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- the HF backend's mask


def test_hf_backend_left_padded_logits_and_greedy_tokens_equal_each_alone():
    pytest.importorskip("transformers")
    from llm_scratch.model.hf_backend import HFGPT2, HFGPT2Config

    torch.manual_seed(0)
    model = HFGPT2(
        HFGPT2Config(vocab_size=40, context_length=24, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    ).eval()
    rows = [torch.randint(0, 40, (n,)) for n in (3, 9, 6)]
    T = 9
    idx = torch.randint(0, 40, (3, T))
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, row in enumerate(rows):
        idx[b, T - len(row) :], mask[b, T - len(row) :] = row, 1
    with torch.no_grad():
        logits, _ = model(idx, attention_mask=mask)
        for b, row in enumerate(rows):
            torch.testing.assert_close(
                logits[b, -len(row) :], model(row[None])[0][0], rtol=0, atol=1e-5
            )
    out = model.generate(idx, 20, temperature=0.0, attention_mask=mask)  # past the context, too
    for b, row in enumerate(rows):
        alone = model.generate(row[None], 20, temperature=0.0)
        assert torch.equal(out[b, T:], alone[0, len(row) :])


# ---------------------------------------------------------------- end to end

TINY_INSTRUCT = [
    "data=instruct",
    *FAST,
    "data.batch_size=4",
    "data.num_sample_prompts=2",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=2",
    "callbacks.text_sampler.max_new_tokens=6",
    "callbacks.periodic_checkpoint.every_n_train_steps=null",
    "optimizer.lr=3e-3",
]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A 6-step fine-tune of gpt-nano on the book's examples: its run directory."""
    run = tmp_path_factory.mktemp("instruct") / "run"
    metrics = train(compose_config(TINY_INSTRUCT, run))
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    return run


@pytest.mark.slow
def test_a_finetune_records_before_and_after_samples_and_its_template(finetuned):
    records = [json.loads(line) for line in (finetuned / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [
        0,
        0,
        3,
        3,
        6,
        6,
    ]  # before the first step, then each validation
    dm = InstructDataModule(data_dir=str(Path(corpora.data_dir())))
    dm.setup()
    for r, example in zip(records, dm.val_examples[:2] * 3, strict=True):
        assert (r["instruction"], r["input"], r["expected"]) == (
            example.instruction,
            example.input,
            example.output,
        )
        assert r["text"] == ALPACA.format(example.instruction, example.input) + r["response"]
    checkpoint = read_checkpoint(finetuned / "checkpoints" / "last.ckpt")
    assert prompt_template(checkpoint) == ALPACA
    assert checkpoint["hyper_parameters"]["prompt_template"] == ALPACA.to_dict()


@pytest.mark.slow
def test_a_finetune_counts_real_tokens_and_validates_on_responses(finetuned):
    dm = InstructDataModule(data_dir=str(corpora.data_dir()), batch_size=4)
    dm.setup()
    batches = list(itertools.islice(dm.train_dataloader(), 6))
    real = sum(b["num_tokens"] for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    rows = read_metrics(finetuned)
    seen = [float(r["train/tokens_seen"]) for r in rows if r.get("train/tokens_seen")]
    assert seen[-1] == real < padded  # the same batches as training drew, padding left out
    # val/loss at step 6: the token-weighted mean cross-entropy over the response tokens of the
    # first two validation batches, recomputed from the checkpoint of that step
    model, _, _ = load_model(finetuned / "checkpoints" / "last.ckpt")
    total = count = 0.0
    with torch.no_grad():
        for batch in itertools.islice(dm.val_dataloader(), 2):
            _, loss = model(batch["input_ids"], batch["targets"])
            total += loss.item() * batch["num_targets"]
            count += batch["num_targets"]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert val[-1] == pytest.approx(total / count, abs=1e-4)


@pytest.mark.slow
def test_prompts_file_answers_in_padded_batches_as_each_prompt_alone(finetuned, tmp_path, capsys):
    ckpt = finetuned / "checkpoints" / "last.ckpt"
    lines = [
        {"instruction": "Name a color."},
        {"instruction": "Translate to French.", "input": "Thank you very much for the help"},
        {"instruction": "What is the capital of Italy?"},
    ]
    path = write_jsonl(tmp_path / "prompts.jsonl", lines)
    args = [
        f"ckpt_path={ckpt}",
        f"prompts_file={path}",
        "temperature=0",
        "max_new_tokens=8",
        "device=cpu",
    ]
    assert sample_main([*args, "batch_size=3"]) == 0
    out = capsys.readouterr().out
    model, tokenizer, _ = load_model(ckpt)
    for i, line in enumerate(lines):
        prompt = ALPACA.format(line["instruction"], line.get("input", ""))
        (alone,) = sample_responses(model, tokenizer, [prompt], max_new_tokens=8, batch_size=1)
        shown = "\n\n".join(t for t in (line["instruction"], line.get("input")) if t)
        assert f"--- prompt {i + 1} ---\n{shown}\n--- response ---\n{alone}\n" in out
    # a text file: one instruction per line, formatted with the checkpoint's template too
    text = tmp_path / "prompts.txt"
    text.write_text("Name a color.\n\nWhat is the capital of Italy?\n")
    assert sample_main([*args[:1], f"prompts_file={text}", *args[2:], "batch_size=2"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- response ---") == 2 and "--- prompt 2 ---\nWhat is the capital" in out
    # and in one batch, greedy responses equal the ones alone
    prompts = [ALPACA.format(line["instruction"], line.get("input", "")) for line in lines]
    batched = sample_responses(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)
    assert batched == [
        sample_responses(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts
    ]


def test_prompts_file_refuses_jsonl_for_a_plain_checkpoint_and_bad_lines(tmp_path, capsys):
    from llm_scratch.sample import read_prompts

    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Hi"}])
    with pytest.raises(UserError, match="not trained on instruction data"):
        read_prompts(str(path), None)
    path.write_text('{"instruction": "Hi"}\n{"input": "no instruction"}\n')
    with pytest.raises(UserError, match=r"line 2 has no 'instruction'"):
        read_prompts(str(path), ALPACA)
    plain = tmp_path / "p.txt"
    plain.write_text("ROMEO:\n\nJULIET:\n")
    assert [p.text for p in read_prompts(str(plain), None)] == ["ROMEO:", "JULIET:"]
    assert sample_main(["ckpt_path=x", f"prompts_file={plain}", "prompt=hi"]) == 2
    assert "error: prompts_file answers every prompt of a file: give it without prompt=" in (
        capsys.readouterr().err
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 4-step run of gpt-nano on The Verdict (GPT-2 BPE, context 128): a pretrained run of ours."""
    run = tmp_path_factory.mktemp("pretrain") / "run"
    overrides = [*FAST, "data.context_length=128", "trainer.max_steps=4", "trainer.max_epochs=-1"]
    train(compose_config([*overrides, "trainer.val_check_interval=2"], run))
    return run


@pytest.mark.slow
def test_finetune_from_a_pretrained_run_of_ours(pretrained, tmp_path):
    best = sorted((pretrained / "checkpoints").glob("best-*.ckpt"))
    assert best  # init_from=<run dir> takes the best checkpoint, as sampling does
    source, _, _ = load_model(best[0])
    run = tmp_path / "run"
    overrides = [
        *TINY_INSTRUCT,
        f"init_from={pretrained}",
        "data.context_length=96",  # shorter than the source's 128: its first 96 positions
        "model.n_layer=5",  # ignored (with a warning): the architecture is the checkpoint's
        "trainer.max_steps=3",
    ]
    train(compose_config(overrides, run))
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    hparams = checkpoint["hyper_parameters"]
    assert hparams["init_from"] == str(pretrained)
    assert hparams["model"]["n_layer"] == 3 and hparams["model"]["context_length"] == 96
    # the "before" responses are the pretrained model's own, so its weights were the start
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    before = [r for r in records if r["step"] == 0]
    prompts = [ALPACA.format(r["instruction"], r["input"]) for r in before]
    tokenizer = BPETokenizer("gpt2")
    expected = sample_responses(source, tokenizer, prompts, max_new_tokens=6)
    assert [r["response"] for r in before] == expected


def test_init_from_a_run_of_ours_is_checked(pretrained, tmp_path):
    from llm_scratch.checkpoint import init_from_config, load_init_weights
    from llm_scratch.model import GPT

    model_cfg = {"dropout": 0.0, "attention": "loop", "n_layer": 3}
    config = init_from_config(model_cfg, str(pretrained), 50257, 32)
    assert (config.context_length, config.attention, config.dropout) == (32, "loop", 0.0)
    model = GPT(config)
    load_init_weights(model, str(pretrained), BPETokenizer("gpt2").to_dict())
    best = sorted((pretrained / "checkpoints").glob("best-*.ckpt"))[0]
    source, _, _ = load_model(best)
    for key, value in model.state_dict().items():
        expected = source.state_dict()[key]
        assert torch.equal(value, expected[:32] if key == "transformer.wpe.weight" else expected)
    with pytest.raises(
        UserError, match=r"trained with context_length=128, shorter than data\.context_length=256"
    ):
        init_from_config(model_cfg, str(pretrained), 50257, 256)
    with pytest.raises(
        UserError, match=r"has a 50257-token vocabulary but the data's tokenizer has 65"
    ):
        init_from_config(model_cfg, str(pretrained), 65, 32)
    with pytest.raises(UserError, match="trained with another tokenizer"):
        load_init_weights(model, str(pretrained), {"type": "char", "chars": list("abc")})
    with pytest.raises(UserError, match=r"init_from=.*missing\.ckpt does not exist"):
        init_from_config(model_cfg, str(tmp_path / "missing.ckpt"), 50257, 32)
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(
        UserError, match=r"init_from=.*empty is a directory without checkpoints/last\.ckpt"
    ):
        init_from_config(model_cfg, str(tmp_path / "empty"), 50257, 32)
