"""Multiple-choice scores of a GPT-2-sized model: ours against Hugging Face GPT-2, the same weights.

No pretrained weights can be downloaded where this was written, so the weights are random: a
``GPT2LMHeadModel`` of GPT-2 small's shapes (124M parameters, ``--size gpt2``; ``--size tiny``
for a 2-layer one) drawn with seed 0, and our GPT given the same tensors (``GPT.from_hf``). The
scores are then near chance; what the figure shows is that they are equal. The task is a local
one this script writes: a cloze over The Verdict's sentences (each sentence's first words, its
true ending and three other sentences' endings), in the plain ``{context, choices, label}``
format, or ``--task <file.jsonl>`` (HellaSwag's format too).

Scored four ways, each printing acc and acc_norm with standard errors and the largest
difference of any choice's log-likelihood from ours:

1. ours: ``llm_scratch.eval`` (the scorer of ``training/evaluate.py``), our GPT, tiktoken;
2. HF: ``GPT2LMHeadModel`` on the same token ids, one unpadded pass per choice;
3. lm-eval ``hf``: the harness's own Hugging Face model (``HFLM``) with a Hugging Face GPT-2
   tokenizer, over a harness task (local YAML, local JSON Lines): an independent pipeline
   (needs lm-eval, and GPT-2's BPE files in ``TIKTOKEN_CACHE_DIR`` for the tokenizer);
4. lm-eval ``llm_scratch``: our harness model over the same harness task.

    python benchmarks/eval_vs_hf.py --examples 200 [--size gpt2] [--out figures.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llm_scratch.data.corpora import load_corpus
from llm_scratch.data.tokenizers import BPETokenizer
from llm_scratch.eval.scorer import encode_task, evaluate_task, mean_and_stderr
from llm_scratch.eval.tasks import TARGET_DELIMITER, read_task
from llm_scratch.model import GPT

SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, n_positions=256),
}
# sha256 of GPT-2's BPE files (tiktoken checks the same): the merges and the vocabulary
BPE_FILES = {
    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5": "merges.txt",
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783": "vocab.json",
}


def cloze_task(text: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` examples: a sentence's first 60% of words, its true ending among 3 others'."""
    sentences = [
        " ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 8
    ]
    rng = random.Random(seed)
    rng.shuffle(sentences)
    records = []
    for i, sentence in enumerate(sentences[:n]):
        words = sentence.split()
        cut = int(len(words) * 0.6)
        others = [s for j, s in enumerate(sentences) if j != i]
        endings = [" ".join(o.split()[int(len(o.split()) * 0.6) :]) for o in rng.sample(others, 3)]
        label = rng.randrange(4)
        endings.insert(label, " ".join(words[cut:]))
        records.append({"context": " ".join(words[:cut]), "choices": endings, "label": label})
    return records


def accuracies(examples, rows: list[list[float]]) -> dict[str, float | None]:
    """acc and acc_norm (per character) with standard errors from per-choice log-likelihoods."""
    pairs = list(zip(examples, rows, strict=True))
    acc = [float(max(range(len(r)), key=r.__getitem__) == e.label) for e, r in pairs]
    norm = [
        float(max(range(len(r)), key=lambda i: r[i] / len(e.choices[i])) == e.label)
        for e, r in pairs
    ]
    (a, a_se), (b, b_se) = mean_and_stderr(acc), mean_and_stderr(norm)
    return {"acc": a, "acc_stderr": a_se, "acc_norm": b, "acc_norm_stderr": b_se}


def hf_direct(hf, pairs: list[tuple[list, list]]) -> list[float]:
    out = []
    with torch.no_grad():
        for context, continuation in pairs:
            whole = torch.tensor([context + continuation])
            logprobs = F.log_softmax(hf(whole[:, :-1]).logits[0].float(), dim=-1)
            start = len(context) - 1
            positions = torch.arange(start, start + len(continuation))
            out.append(float(logprobs[positions, torch.tensor(continuation)].sum()))
    return out


def hf_tokenizer(folder: Path):
    """GPT-2's Hugging Face tokenizer from the BPE files in tiktoken's cache (the same files
    the hub's gpt2 tokenizer holds), or None when they are not there."""
    import transformers

    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not cache or not Path(cache).is_dir():
        return None
    for path in Path(cache).iterdir():
        name = BPE_FILES.get(hashlib.sha256(path.read_bytes()).hexdigest())
        if name:
            shutil.copyfile(path, folder / name)
    if not all((folder / name).is_file() for name in BPE_FILES.values()):
        return None
    return transformers.GPT2TokenizerFast.from_pretrained(str(folder))


def harness_task(folder: Path, name: str, data: Path) -> None:
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {{test: {data}}}\n  cache_dir: {folder / 'hf_cache'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        f'doc_to_text: "{{{{context}}}}"\ndoc_to_choice: choices\ndoc_to_target: label\n'
        f'target_delimiter: "{TARGET_DELIMITER}"\n'
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n"
    )


def run_harness(lm, name: str, folder: Path, n_examples: int) -> tuple[dict, list[list[float]]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[name],
        task_manager=TaskManager(include_path=str(folder)),
        log_samples=True,
        verbosity="WARNING",
    )
    r = results["results"][name]
    figures = {
        "acc": r["acc,none"],
        "acc_stderr": r["acc_stderr,none"],
        "acc_norm": r["acc_norm,none"],
        "acc_norm_stderr": r["acc_norm_stderr,none"],
    }
    rows: list[list[float]] = [[] for _ in range(n_examples)]
    for sample in results["samples"][name]:
        rows[sample["doc_id"]] = [float(ll) for ll, _ in sample["filtered_resps"]]
    return figures, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--task", type=Path, default=None, help="a task file instead of the cloze")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON too")
    args = parser.parse_args(argv)
    import transformers

    torch.set_grad_enabled(False)
    work = Path(tempfile.mkdtemp(prefix="eval_vs_hf_"))
    try:
        if args.task is None:
            data = work / "verdict_cloze.jsonl"
            records = cloze_task(load_corpus("verdict"), args.examples)
            data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        else:
            data = args.task
        task = read_task(data, limit=args.examples)
        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=50257, **SIZES[args.size])
        hf = transformers.GPT2LMHeadModel(config).eval()
        ours = GPT.from_hf(hf, dropout=0.0).eval()
        tokenizer = BPETokenizer("gpt2")
        n_params = sum(p.numel() for p in ours.parameters())
        print(
            f"model: GPT-2 shapes ({args.size}: {n_params / 1e6:.0f}M parameters), random "
            f"weights (seed 0); task: {task.name}, {len(task.examples)} examples, "
            f"{sum(len(e.choices) for e in task.examples)} choices"
        )
        rows = {}
        figures = {}
        start = time.perf_counter()
        result = evaluate_task(ours, tokenizer, task, args.batch_size)
        rows["ours"] = [list(r) for r in result.logprobs]
        figures["ours"] = {k: v for k, v in result.to_dict().items() if k.startswith("acc")}
        times = {"ours": time.perf_counter() - start}
        start = time.perf_counter()
        flat = hf_direct(hf, encode_task(task, tokenizer))
        it = iter(flat)
        rows["hf"] = [[next(it) for _ in e.choices] for e in task.examples]
        figures["hf"] = accuracies(task.examples, rows["hf"])
        times["hf"] = time.perf_counter() - start
        try:
            from llm_scratch.eval.lm_eval_model import LLMScratchLM
        except ImportError:
            print("lm-eval is not installed: the harness rows are left out (pip install lm-eval)")
        else:
            name = "eval_vs_hf_task"
            harness_task(work, name, data.resolve())
            hf_tok = hf_tokenizer(work)
            try:
                from lm_eval.models.huggingface import HFLM  # needs accelerate too
            except ImportError as error:
                print(f"lm-eval's hf model cannot load ({error}): its row is left out")
                hf_tok = None
            if hf_tok is None:
                print(
                    "no Hugging Face GPT-2 tokenizer (BPE files in TIKTOKEN_CACHE_DIR): no hf row"
                )
            else:
                start = time.perf_counter()
                lm = HFLM(pretrained=hf, tokenizer=hf_tok, batch_size=args.batch_size, device="cpu")
                figures["lm-eval hf"], rows["lm-eval hf"] = run_harness(
                    lm, name, work, len(task.examples)
                )
                times["lm-eval hf"] = time.perf_counter() - start
            start = time.perf_counter()
            lm = LLMScratchLM(model=ours, tokenizer=tokenizer, batch_size=args.batch_size)
            figures["lm-eval llm_scratch"], rows["lm-eval llm_scratch"] = run_harness(
                lm, name, work, len(task.examples)
            )
            times["lm-eval llm_scratch"] = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def pm(value, se):
        return f"{value:.4f} ± {se:.4f}" if se is not None else f"{value:.4f}"

    print(f"{'scored by':<22}{'acc':>18}{'acc_norm':>18}{'max |Δ loglik|':>16}{'time':>8}")
    report = {}
    for source, f in figures.items():
        diff = max(
            abs(a - b)
            for ra, rb in zip(rows[source], rows["ours"], strict=True)
            for a, b in zip(ra, rb, strict=True)
        )
        print(
            f"{source:<22}{pm(f['acc'], f['acc_stderr']):>18}"
            f"{pm(f['acc_norm'], f['acc_norm_stderr']):>18}{diff:>16.2e}{times[source]:>7.1f}s"
        )
        report[source] = {**f, "max_abs_loglik_diff_vs_ours": diff, "seconds": times[source]}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
