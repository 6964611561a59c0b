"""Evaluation beyond the loss: task files, the multiple-choice scorer, training/evaluate.py, the
lm-evaluation-harness model, and task accuracy during training."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llm_scratch.checkpoint import load_model
from llm_scratch.data.tokenizers import BPETokenizer, CharTokenizer
from llm_scratch.errors import UserError
from llm_scratch.eval.evaluate import EvaluateConfig, evaluate, split_task_lists
from llm_scratch.eval.scorer import encode_pair, encode_task, evaluate_task, score_tokens
from llm_scratch.eval.tasks import hellaswag_preprocess, read_task, read_tasks
from llm_scratch.model import GPT, GPTConfig
from tests.helpers import CHAR_VERDICT, char_checkpoint, compose_config, read_metrics, run_cli

# HellaSwag's own format (hellaswag_val.jsonl), with its WikiHow artifacts ([title], [step])
HELLASWAG = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "label": 3,
    },
    {
        "ind": 92,
        "activity_label": "Clean and jerk",
        "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
        "ctx_b": "the lady",
        "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
        "endings": [
            "swings and lands in her arms.",
            "pulls the barbell forward.",
            "pulls a rope attached to the barbell.",
            "stands and lifts the weight over her head.",
        ],
        "label": "3",  # the Hub's copy holds labels as text
    },
    {
        "ind": 106,
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to grow a lemon tree [title] Pick a sunny spot.",
        "ctx_b": "",
        "ctx": "[header] How to grow a lemon tree [title] Pick a sunny spot.",
        "endings": [
            "[step] Lemon trees need eight hours of sun a day.",
            "[step] Water the tree once a year.",
            "[substeps] Plant it in a closet.",
            "Paint the pot blue [title] Wait.",
        ],
        "label": 0,
    },
]
PLAIN = [
    {"context": "The capital of France is", "choices": ["Paris", "a banana"], "label": 0},
    {"context": "Two plus two is", "choices": ["five", "four", "fish"], "label": 1},
    {"context": "The sky is", "choices": ["blue", "made of cheese"], "label": 0},
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


class Unigram(nn.Module):
    """A model whose next-token distribution is always ``probs``: log-likelihoods by hand."""

    def __init__(self, probs: list[float], context_length: int = 32) -> None:
        super().__init__()
        self.config = SimpleNamespace(context_length=context_length)
        self.lm_head = nn.Linear(1, len(probs))
        with torch.no_grad():
            self.lm_head.weight.zero_()
            self.lm_head.bias.copy_(torch.tensor(probs).log())

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, 1)


def char_model(context_length: int = 16) -> tuple[GPT, CharTokenizer]:
    tokenizer = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .,'")
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=context_length, n_layer=2, n_head=2,
        n_embd=16, dropout=0.0,
    )  # fmt: skip
    return GPT(config).eval(), tokenizer


def direct_logprob(model: nn.Module, context: list[int], continuation: list[int]) -> float:
    """The continuation's log-likelihood from one unpadded forward pass of the whole pair."""
    whole = torch.tensor([context + continuation])
    with torch.no_grad():
        logits = model(whole[:, :-1])[0][0]
    logprobs = F.log_softmax(logits.float(), dim=-1)
    start = len(context) - 1
    return sum(logprobs[start + j, t].item() for j, t in enumerate(continuation))


# ------------------------------------------------------------------------------------ task files
def test_hellaswag_and_plain_lines_read_as_the_harness_builds_them(tmp_path):
    task = read_task(write_jsonl(tmp_path / "hs.jsonl", HELLASWAG))
    assert task.name == "hs" and len(task.examples) == 3
    first, second, third = task.examples
    assert first.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert first.choices[3] == "starts pulling up roofing on a roof." and first.label == 3
    assert second.label == 3 and second.line == 2
    # [title] becomes a sentence break, other bracketed markers go
    assert third.context == "Home and Garden: How to grow a lemon tree. Pick a sunny spot."
    # (the harness strips before it removes a marker: a leading one leaves a space, kept here too)
    assert third.choices[0] == " Lemon trees need eight hours of sun a day."
    plain = read_task(write_jsonl(tmp_path / "plain.jsonl", PLAIN), limit=2)
    assert [e.label for e in plain.examples] == [0, 1]
    assert plain.examples[1].choices == ("five", "four", "fish")


def test_hellaswag_preprocessing_is_the_harness_own(tmp_path):
    hellaswag = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    datasets = pytest.importorskip("datasets")
    # (the Hub's copy, as the harness loads it, holds every label as text)
    hub = [dict(r, label=str(r["label"])) for r in HELLASWAG]
    docs = hellaswag.process_docs(datasets.Dataset.from_list(hub))
    ours = read_task(write_jsonl(tmp_path / "hs.jsonl", HELLASWAG)).examples
    for doc, example in zip(docs, ours, strict=True):
        assert (doc["query"], tuple(doc["choices"]), doc["gold"]) == (
            example.context,
            example.choices,
            example.label,
        )
    assert hellaswag_preprocess(" a [title] b  [step] c ") == hellaswag.preprocess(
        " a [title] b  [step] c "
    )


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"context": "a", "choices": ["b", "c"], "label": 0}\n{"context": "a",', "line 2 is not valid JSON"),
        ("[" * 200_000 + "]" * 200_000, "line 1 is nested too deeply"),
        ('{"context": "a", "choices": ["b", "c"], "label": ' + "9" * 5000 + "}", "line 1 cannot be read as JSON"),
        ('{"context": "a", "choices": ["b", "c"], "label": 2}', "label 2 is out of range for its 2"),
        ('{"context": "a", "choices": ["b", "c"], "label": -1}', "without labels cannot be scored"),
        ('{"context": "a", "choices": ["b"], "label": 0}', "has 1 choice(s); give at least 2"),
        ('{"context": "a", "label": 0}', "line 1: missing 'choices'"),
        ('{"context": "a", "choices": ["b", ""], "label": 0}', "holds an empty choice"),
        ('{"context": "a", "choices": ["b", "c"], "label": "x"}', "'label' must be the index"),
        ('{"ctx_a": "a", "ctx_b": "b", "endings": ["x", "y"]}', "line 1: no 'label'"),
        ("[1, 2]", "line 1: not a JSON object"),
        ("\n\n", "has no examples"),
    ],
)  # fmt: skip
def test_a_bad_task_file_is_one_line_naming_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "task.jsonl"
    path.write_text(content + "\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        read_task(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_a_task_name_is_a_file_here_not_a_download(tmp_path):
    with pytest.raises(UserError, match="hellaswag does not exist .*not downloaded"):
        read_task("hellaswag")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    paths = [str(write_jsonl(d / "same.jsonl", PLAIN)) for d in (a, b)]
    with pytest.raises(UserError, match="Two task files are named 'same'"):
        read_tasks(paths)


def test_tasks_given_with_commas_become_a_list_hydra_reads():
    assert split_task_lists(["x.py", "tasks=a.jsonl,b/c.jsonl", "limit=3"]) == [
        "x.py",
        "tasks=['a.jsonl','b/c.jsonl']",
        "limit=3",
    ]
    assert split_task_lists(["tasks=[a.jsonl]"]) == ["tasks=[a.jsonl]"]


# ---------------------------------------------------------------------------------- the scorer
def test_accuracies_and_standard_errors_by_hand():
    # p(" ")=0.5, p("a")=0.3, p("b")=0.2 at every position
    model, tokenizer = Unigram([0.5, 0.3, 0.2]), CharTokenizer(" ab")
    ll = {"a": math.log(0.5 * 0.3), "aa": math.log(0.5 * 0.3 * 0.3), "b": math.log(0.5 * 0.2)}
    # summed: "a" wins; per character: "aa" (-1.55 against -1.90); per token: "a" (-0.95)
    examples = [("a", 1), ("a", 0), ("a", 1)]
    from llm_scratch.eval.tasks import Example, Task

    task = Task("t", Path("t.jsonl"), tuple(Example(c, ("a", "aa", "b"), y) for c, y in examples))
    result = evaluate_task(model, tokenizer, task, batch_size=2)
    for row in result.logprobs:
        assert row == pytest.approx((ll["a"], ll["aa"], ll["b"]), abs=1e-6)
    assert (result.acc, result.acc_norm, result.acc_per_token) == pytest.approx(
        (1 / 3, 2 / 3, 1 / 3)
    )
    # the sample sd of (0, 1, 0) over sqrt(3): the harness's mean_stderr
    assert result.acc_stderr == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))
    assert result.acc_norm_stderr == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))
    assert result.n == 3 and result.truncated == 0
    # greedy: the most likely token at every position of the continuation
    space, a = tokenizer.encode(" a")
    scores = score_tokens(model, [([a], [space]), ([a], [space, a])])
    assert [s.greedy for s in scores] == [True, False]


def test_batched_padded_scores_equal_one_pass_per_pair():
    model, tokenizer = char_model(context_length=32)
    texts = [("the cat", " sat"), ("a", " much longer continuation"), ("hello there ", "world")]
    pairs = [encode_pair(tokenizer, c, k) for c, k in texts]
    # the context's trailing space moves to the continuation, as the harness does
    assert tokenizer.decode(pairs[2][1]) == " world"
    batched = score_tokens(model, pairs, batch_size=3)
    alone = [score_tokens(model, [p], batch_size=1)[0] for p in pairs]
    for b, a, (context, continuation) in zip(batched, alone, pairs, strict=True):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-5)
        assert b.logprob == pytest.approx(direct_logprob(model, context, continuation), abs=1e-5)
        assert b.n_tokens == len(continuation) and not b.truncated
    assert model.training is False


def test_an_example_longer_than_the_context_is_cut_from_the_left_and_counted(tmp_path):
    model, tokenizer = char_model(context_length=16)
    context, continuation = tokenizer.encode("a" * 20 + "the cat"), tokenizer.encode(" sat")
    (cut,) = score_tokens(model, [(context, continuation)])
    kept = context[-(16 + 1 - len(continuation)) :]  # the last 17 tokens of the pair
    (short,) = score_tokens(model, [(kept, continuation)])
    assert cut.truncated and not short.truncated
    assert cut.logprob == pytest.approx(short.logprob, abs=1e-6)
    records = [
        {"context": "a" * 30, "choices": ["b", "c"], "label": 0},
        {"context": "the sky is", "choices": ["blue", "green"], "label": 0},
    ]
    task = read_task(write_jsonl(tmp_path / "long.jsonl", records))
    assert evaluate_task(model, tokenizer, task).truncated == 1
    with pytest.raises(UserError, match="continuation of 20 tokens is longer than the model's"):
        score_tokens(model, [(context[:1], context[:20])])
    records = [{"context": "the", "choices": ["sky", "sky " * 5], "label": 0}]
    task = read_task(write_jsonl(tmp_path / "longer.jsonl", records))
    with pytest.raises(UserError, match=r"longer.jsonl, line 1: choice 1 is 21 tokens, longer"):
        evaluate_task(model, tokenizer, task)


def test_a_character_the_char_tokenizer_lacks_is_one_line_naming_the_example(tmp_path):
    model, tokenizer = char_model()
    records = [
        {"context": "the sky is", "choices": ["blue", "green"], "label": 0},
        {"context": "the sky", "choices": ["blue", "Grün!"], "label": 0},
    ]
    task = read_task(write_jsonl(tmp_path / "t.jsonl", records))
    with pytest.raises(UserError, match=r"t.jsonl, line 2: .*'G', 'ü', '!'"):
        encode_task(task, tokenizer)
    with pytest.raises(UserError, match="empty context needs an end-of-text token"):
        encode_pair(tokenizer, "", " a")


# ------------------------------------------------------------------------ GPT-2 against HF's
@pytest.fixture(scope="module")
def gpt2_pair():
    """A small random GPT-2 (GPT-2's vocabulary) in transformers, and ours with its weights."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()
    return hf, GPT.from_hf(hf, dropout=0.0).eval()


def gpt2_checkpoint(path: Path, model: GPT) -> Path:
    """A checkpoint of ours holding ``model`` and the GPT-2 tokenizer, as training writes it."""
    hparams = {
        "model": dataclasses.asdict(model.config),
        "tokenizer": {"type": "tiktoken", "encoding": "gpt2"},
    }
    state = {"model." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams, "global_step": 7}, path)
    return path


def test_our_log_likelihoods_equal_hugging_face_gpt2_with_the_same_weights(tmp_path, gpt2_pair):
    hf, ours = gpt2_pair
    tokenizer = BPETokenizer("gpt2")
    task = read_task(write_jsonl(tmp_path / "hs.jsonl", HELLASWAG))
    result = evaluate_task(ours, tokenizer, task, batch_size=5)
    pairs = iter(encode_task(task, tokenizer))
    for row in result.logprobs:
        theirs = [direct_logprob(lambda x: (hf(x).logits,), *next(pairs)) for _ in row]
        assert max(abs(a - b) for a, b in zip(row, theirs, strict=True)) < 1e-4
        assert max(range(len(row)), key=lambda i: theirs[i]) == max(
            range(len(row)), key=lambda i: row[i]
        )


# --------------------------------------------------------------------------- training/evaluate.py
@pytest.mark.slow
def test_evaluate_writes_accuracies_with_standard_errors(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = char_checkpoint(run / "checkpoints" / "last.ckpt", text="the sky is blue\n")
    task = write_jsonl(tmp_path / "sky.jsonl", [PLAIN[2]] * 3)
    done = run_cli("training/evaluate.py", f"ckpt_path={run}", f"tasks={task},{task}")
    assert done.returncode == 2 and "Two task files are named 'sky'" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    # a character the checkpoint's char tokenizer lacks ("m" of "made of cheese"): nothing written
    done = run_cli("training/evaluate.py", f"ckpt_path={ckpt}", f"tasks={task}")
    assert done.returncode == 2 and done.stderr.startswith(f"error: {task}, line 1: Text has")
    assert not (run / "eval.json").exists()
    sky = write_jsonl(tmp_path / "sky.jsonl", [{"context": "the sky", "choices": ["is", "be"], "label": 0}] * 2)  # fmt: skip
    done = run_cli("training/evaluate.py", f"ckpt_path={run}", f"tasks={sky}")
    assert done.returncode == 0, done.stderr
    written = json.loads((run / "eval.json").read_text())
    model, tokenizer, _ = load_model(ckpt)
    expected = evaluate_task(model, tokenizer, read_task(sky))
    assert written["tasks"]["sky"] == pytest.approx(expected.to_dict())
    assert set(written["tasks"]["sky"]) >= {"acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n"}
    assert f"sky: n=2  acc {expected.acc:.4f}" in done.stdout


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"tasks": []}, "No task files"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"limit": 0}, "limit=0"),
        ({"ckpt_path": "missing_run"}, "ckpt_path=missing_run does not exist"),
        ({"device": "cuda:9"}, "device=cuda:9"),
    ],
)
def test_evaluate_refuses_bad_settings_in_one_line(tmp_path, overrides, message):
    if overrides.get("device") and torch.cuda.device_count() > 9:
        pytest.skip("this machine has a tenth GPU")
    ckpt = char_checkpoint(tmp_path / "x.ckpt", text="the sky is blue\n")
    task = write_jsonl(tmp_path / "t.jsonl", [{"context": "sky", "choices": ["is", "be"], "label": 0}])  # fmt: skip
    cfg = EvaluateConfig(**{"ckpt_path": str(ckpt), "tasks": [str(task)], **overrides})
    with pytest.raises(UserError, match=message):
        evaluate(cfg)


# ----------------------------------------------------------------- the lm-evaluation-harness model
def harness_task(directory: Path, name: str, records: list) -> Path:
    """A harness task defined in a local YAML over a local JSON Lines file."""
    directory.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(directory / f"{name}.jsonl", records)
    (directory / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files: {{test: {data}}}\n"
        f"  cache_dir: {directory / 'hf_cache'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n"
    )
    return directory


def instances(kind: str, args: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@pytest.mark.slow
def test_the_harness_scores_a_local_task_as_our_scorer_does(tmp_path, gpt2_pair):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    import llm_scratch.eval.lm_eval_model  # noqa: F401 - registers llm_scratch

    _, ours = gpt2_pair
    ckpt = gpt2_checkpoint(tmp_path / "gpt2.ckpt", ours)
    records = PLAIN * 2
    tasks = harness_task(tmp_path / "tasks", "llm_scratch_test_mc", records)
    results = lm_eval.simple_evaluate(
        model="llm_scratch",
        model_args=f"ckpt_path={ckpt}",
        tasks=["llm_scratch_test_mc"],
        task_manager=TaskManager(include_path=str(tasks)),
        batch_size=4,
        log_samples=True,
    )
    figures = results["results"]["llm_scratch_test_mc"]
    expected = evaluate_task(
        ours, BPETokenizer("gpt2"), read_task(tasks / "llm_scratch_test_mc.jsonl")
    )
    assert figures["acc,none"] == pytest.approx(expected.acc)
    assert figures["acc_norm,none"] == pytest.approx(expected.acc_norm)
    assert figures["acc_stderr,none"] == pytest.approx(expected.acc_stderr)
    for sample in results["samples"]["llm_scratch_test_mc"]:
        theirs = [ll for ll, _ in sample["filtered_resps"]]
        assert theirs == pytest.approx(expected.logprobs[sample["doc_id"]], abs=1e-5)


def test_the_harness_model_rolls_windows_and_generates_greedily(gpt2_pair):
    pytest.importorskip("lm_eval")
    from llm_scratch.eval.lm_eval_model import LLMScratchLM

    _, ours = gpt2_pair  # context of 64 tokens
    tokenizer = BPETokenizer("gpt2")
    lm = LLMScratchLM(model=ours, tokenizer=tokenizer, batch_size=2)
    eos = tokenizer.eos_id
    short = "The quick brown fox jumps over the lazy dog."
    long_text = " ".join(f"word{i}" for i in range(60))  # more than 64 tokens
    tokens = tokenizer.encode(long_text)
    n = len(tokens)
    assert 64 < n < 128
    rolled = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(short,), (long_text,)]))
    # a text within the context: one pass after end-of-text
    assert rolled[0] == pytest.approx(
        direct_logprob(ours, [eos], tokenizer.encode(short)), abs=1e-4
    )
    # beyond it: the first 64 tokens after end-of-text, then the rest with the most context
    rest = n - 64
    expected = direct_logprob(ours, [eos], tokens[:64]) + direct_logprob(
        ours, tokens[n - 64 - 1 : n - rest], tokens[n - rest :]
    )
    assert rolled[1] == pytest.approx(expected, abs=1e-4)
    # loglikelihood: our scorer's numbers
    pairs = [("The sky is", " blue"), ("Two plus two is", " four")]
    got = lm.loglikelihood(instances("loglikelihood", pairs))
    want = score_tokens(ours, [encode_pair(tokenizer, c, k) for c, k in pairs])
    assert [g[0] for g in got] == pytest.approx([w.logprob for w in want], abs=1e-6)
    # generate_until: greedy, each prompt as it gets alone, cut at the stop string
    prompts = ["Once upon a time", "The"]
    kwargs = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}
    texts = lm.generate_until(instances("generate_until", [(p, kwargs) for p in prompts]))
    for prompt, text in zip(prompts, texts, strict=True):
        ids = torch.tensor([tokenizer.encode(prompt)])
        alone = ours.generate(ids, 6, temperature=0.0, eos_id=eos)[0, ids.size(1) :].tolist()
        if eos in alone:
            alone = alone[: alone.index(eos)]
        assert text == tokenizer.decode(alone).split("\n")[0]


@pytest.mark.slow
def test_lm_eval_command_line_with_our_model(tmp_path, gpt2_pair):
    pytest.importorskip("lm_eval")
    _, ours = gpt2_pair
    ckpt = gpt2_checkpoint(tmp_path / "gpt2.ckpt", ours)
    tasks = harness_task(tmp_path / "tasks", "llm_scratch_cli_mc", PLAIN)
    args = ["--model", "llm_scratch", "--tasks", "llm_scratch_cli_mc", "--include_path", str(tasks)]
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    done = run_cli(
        "-m", "llm_scratch.eval.lm_eval_cli", *args, "--model_args", f"ckpt_path={ckpt}",
        "--device", "cpu", "--output_path", str(out), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    expected = evaluate_task(
        ours, BPETokenizer("gpt2"), read_task(tasks / "llm_scratch_cli_mc.jsonl")
    )
    (written,) = out.glob("**/results_*.json")
    figures = json.loads(written.read_text())["results"]["llm_scratch_cli_mc"]
    assert figures["acc,none"] == pytest.approx(expected.acc)
    assert figures["acc_norm,none"] == pytest.approx(expected.acc_norm)
    done = run_cli("-m", "llm_scratch.eval.lm_eval_cli", *args, "--model_args", "ckpt_path=nowhere", env=env)  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1].startswith("error: ckpt_path=nowhere does not exist")
    )


# ----------------------------------------------------------------------- during training
@pytest.mark.slow
def test_task_accuracy_is_logged_every_n_validations(tmp_path, shared_data_dir):
    from llm_scratch.train.job import train

    verdict = [
        {
            "context": "I had always thought Jack Gisburn rather a cheap",
            "choices": ["genius", "dog"],
            "label": 0,
        },  # fmt: skip
        {"context": "It was no", "choices": ["great surprise", "cat"], "label": 0},
    ]
    task = write_jsonl(tmp_path / "verdict_mc.jsonl", verdict)
    overrides = [
        *CHAR_VERDICT,
        "trainer.max_steps=8",
        "trainer.val_check_interval=2",
        "callbacks=eval",
        f"callbacks.task_eval.tasks=[{task}]",
        "callbacks.task_eval.every_n_validations=2",
    ]
    run = tmp_path / "run"
    metrics = train(compose_config(overrides, run))
    rows = read_metrics(run)
    logged = [int(r["step"]) for r in rows if r.get("eval/verdict_mc/acc")]
    assert logged == [4, 8]  # validations at steps 2, 4, 6, 8: every second one
    assert 0.0 <= metrics["eval/verdict_mc/acc_norm"] <= 1.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["eval/verdict_mc/acc"] == metrics["eval/verdict_mc/acc"]


def test_callbacks_eval_adds_the_task_callback_to_the_default_ones(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_config(["callbacks=eval"], tmp_path / "run")
    assert {"model_checkpoint", "text_sampler", "task_eval"} <= set(cfg.callbacks)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "a", "choices": ["b", "c"], "label": 5}])
    cfg.callbacks.task_eval.tasks = [str(bad)]
    with pytest.raises(Exception, match="label 5 is out of range"):
        instantiate(cfg.callbacks.task_eval)
