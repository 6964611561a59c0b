"""The GPU acceptance run behind ``scripts/gpu_check.sh``: the CUDA paths in one go, offline.

``python scripts/gpu_check.py OUT_DIR [--dry-run] [--budget SECONDS]`` runs, in this order
(the most needed first, each with its own time limit, the whole within ``--budget``):

1. ``tests``: the tests marked ``gpu`` (tests/test_gpu.py: bf16-mixed steps, compile vs eager,
   a GPU checkpoint sampled on the CPU, trainer=fsdp and trainer=ddp on every GPU);
2. ``throughput``: GPT-2 small (124M) at context 1024, bf16-mixed, tokens/s and MFU through
   Lightning, eager and ``compile=true`` (``python -m llm_scratch.bench throughput``);
3. ``fsdp``: the same model under ``trainer=fsdp`` on every GPU, tokens/s and MFU as logged;
4. ``attention``: loop vs fused attention at context 1024 (GPT-2's 12 heads, 768 wide);
5. ``generation``: GPT-2 small decoding with and without the KV cache;
6. ``sweep``: a 2-job ``hydra/launcher=gpu_parallel`` sweep (both jobs at once, on one GPU
   when there is only one);
7. ``fsdp_checkpointing``: ``trainer=fsdp`` with activation checkpointing, its cost in tokens/s.

Every step writes into OUT_DIR (its log, its JSON); ``gpu_check.json`` holds them all and a
table is printed at the end. Without a CUDA GPU it writes ``gpu_check.json`` saying so and exits
0 having run nothing. Nothing is installed and nothing is downloaded: the corpora and GPT-2's BPE
files must be in ``LLM_SCRATCH_DATA_DIR`` (default: ``<checkout>/../shared/data``, then
``<checkout>/shared/data``) and ``TIKTOKEN_CACHE_DIR`` (default: ``<data dir>/tiktoken``).
Only the standard library is imported here; torch is asked in a subprocess.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# tiktoken's cache names its files by the sha1 of their URL: GPT-2's vocab.bpe and encoder.json
GPT2_BPE_FILES = (
    "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
    "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
)
DEFAULT_BUDGET_S = 450  # of the 8 minutes a lent GPU allows: start-up and slack stay outside
# GPT-2 small on BPE Tiny Shakespeare at context 1024, bf16-mixed: the benchmark every
# throughput step shares. Batch 8 (8,192 tokens a step) fits a 24 GB GPU.
GPT2 = [
    "model=gpt2",
    "data=shakespeare_bpe",
    "data.context_length=1024",
    "data.batch_size=8",
    "trainer.precision=bf16-mixed",
]
CLI_RUN = [
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=10",
    "data.sampling=random",
    "data.samples_per_epoch=400",
    "trainer.max_steps=40",
    "callbacks.text_sampler=null",
    "callbacks.periodic_checkpoint=null",
]


@dataclass
class Step:
    name: str
    command: list[str]
    timeout_s: int
    what: str
    run_dir: Path | None = None  # a training run's directory, read for figures afterwards
    result: dict[str, Any] = field(default_factory=dict)


def data_dirs() -> tuple[Path, Path]:
    """The corpora folder and tiktoken's cache folder this run reads."""
    given = os.environ.get("LLM_SCRATCH_DATA_DIR")
    if given:
        data = Path(given)
    else:
        candidates = [REPO.parent / "shared" / "data", REPO / "shared" / "data"]
        data = next((c for c in candidates if c.is_dir()), candidates[0])
    tiktoken = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or data / "tiktoken")
    return data, tiktoken


def missing_data(data: Path, tiktoken: Path) -> list[str]:
    missing = [str(data / f) for f in ("tinyshakespeare.txt",) if not (data / f).is_file()]
    missing += [str(tiktoken / f) for f in GPT2_BPE_FILES if not (tiktoken / f).is_file()]
    return missing


# what the steps import: the README's install gives them all
NEEDED = ("torch", "lightning", "hydra", "omegaconf", "torchmetrics", "tiktoken", "llm_scratch")


def missing_modules() -> list[str]:
    """The modules of NEEDED this Python cannot import (the checkout on its path)."""
    code = (
        "import importlib.util, sys; "
        f"print(' '.join(m for m in {NEEDED!r} if importlib.util.find_spec(m) is None))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60
    )
    return out.stdout.split() if out.returncode == 0 else list(NEEDED)


def cuda_devices() -> tuple[int, str]:
    """(number of CUDA GPUs torch sees, the first one's name), asked in a subprocess."""
    code = (
        "import torch; n = torch.cuda.device_count() if torch.cuda.is_available() else 0; "
        "print(n); print(torch.cuda.get_device_name(0) if n else '')"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
        )
    except subprocess.TimeoutExpired:
        return 0, ""
    lines = out.stdout.splitlines()
    if out.returncode != 0 or not lines:
        return 0, ""
    return int(lines[0]), (lines[1] if len(lines) > 1 else "")


def plan(out: Path, n_gpus: int, cpu_smoke: bool = False) -> list[Step]:
    """The steps, in order. ``cpu_smoke``: the same steps at toy sizes on the CPU (2 processes
    for trainer=fsdp), to check the commands and the figures they report without a GPU."""
    py = sys.executable
    train = [py, "training/run_experiment.py"]
    bench = [py, "-m", "llm_scratch.bench"]
    gpt2, cli_run, device, single = list(GPT2), list(CLI_RUN), "cuda", "trainer=gpu"
    sizes = dict(steps="20", warmup="5", context="1024", heads="12", n_embd="768", model="gpt2")
    sizes |= dict(new_tokens="200", micro_context="256")
    fsdp = ["trainer=fsdp"]
    if cpu_smoke:
        gpt2 = ["model=gpt-nano", "data=shakespeare_bpe", "data.context_length=64"]
        gpt2 += ["data.batch_size=2", "trainer.precision=32-true"]
        cli_run = [o for o in cli_run if not o.startswith("trainer.max_steps")]
        cli_run += ["trainer.max_steps=4", "trainer.log_every_n_steps=2"]
        device, single = "cpu", "trainer=cpu"
        sizes = dict(steps="3", warmup="1", context="128", heads="2", n_embd="96", model="gpt-nano")
        sizes |= dict(new_tokens="10", micro_context="32")
        fsdp += ["trainer.accelerator=cpu", "trainer.devices=2"]
    # one GPU: both sweep jobs on it at once; more: one each
    share = ["hydra.launcher.devices=[0,0]"] if n_gpus == 1 else ["hydra.launcher.parallel_jobs=2"]
    # one process: the GPU tests measure memory and speed on the one device (no xdist workers)
    tests = [py, "-m", "pytest", "-n", "0", "-m", "gpu", "tests/test_gpu.py", "-q", "-rs"]
    return [
        Step("tests", [*tests, "-p", "no:cacheprovider"], 240, "tests marked gpu"),
        Step(
            "throughput",
            [
                *bench,
                "throughput",
                *gpt2,
                single,
                *("--steps", sizes["steps"], "--warmup", sizes["warmup"]),
                *("--variants", "", "compile=true"),
                *("--out", str(out / "throughput.json")),
            ],
            240,
            f"{' '.join(gpt2)}: eager and compile=true",
        ),
        Step(
            "fsdp",
            [*train, *gpt2, *fsdp, *cli_run, f"hydra.run.dir={out / 'fsdp'}"],
            150,
            f"{sizes['model']} under trainer=fsdp on every GPU ({n_gpus})",
            run_dir=out / "fsdp",
        ),
        Step(
            "attention",
            [
                *bench,
                "attention",
                *("--contexts", sizes["context"], "--heads", sizes["heads"]),
                *("--n-embd", sizes["n_embd"], "--batch", "8", "--device", device),
                *("--out", str(out / "attention.json")),
            ],
            90,
            f"loop vs fused attention, context {sizes['context']}, {sizes['heads']} heads",
        ),
        Step(
            "generation",
            [
                *bench,
                "generation",
                *("--model", sizes["model"], "--new-tokens", sizes["new_tokens"]),
                *("--batches", "1,8", "--past-context", "0", "--device", device),
                *("--out", str(out / "generation.json")),
            ],
            120,
            f"{sizes['model']} decoding, KV cache vs none",
        ),
        Step(
            "sweep",
            [
                *train,
                "-m",
                "hydra/launcher=gpu_parallel",
                *share,
                single,
                "model=gpt-micro",
                "data=shakespeare_char",
                f"data.context_length={sizes['micro_context']}",
                *cli_run,
                "model.tie_weights=true,false",
                f"hydra.sweep.dir={out / 'sweep'}",
            ],
            150,
            "2-job gpu_parallel sweep, both jobs at once",
            run_dir=out / "sweep",
        ),
        Step(
            "fsdp_checkpointing",
            [
                *train,
                *gpt2,
                *fsdp,
                "trainer.strategy.activation_checkpointing=true",
                *cli_run,
                f"hydra.run.dir={out / 'fsdp_checkpointing'}",
            ],
            150,
            "trainer=fsdp with activation checkpointing",
            run_dir=out / "fsdp_checkpointing",
        ),
    ]


def last_logged(run_dir: Path) -> dict[str, float]:
    """The last logged training figures of a run (tokens/s, MFU, loss) and its summary."""
    found: dict[str, float] = {}
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        with metrics.open() as f:
            for row in csv.DictReader(f):
                for key in ("train/loss", "train/tokens_per_sec", "train/mfu"):
                    if row.get(key):
                        found[key] = float(row[key])
    summary = run_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        for key in ("world_size", "global_step", "peak_memory_mb", "tokens_per_sec"):
            if key in data:
                found[f"summary/{key}"] = data[key]
    return found


def figures(step: Step, out: Path) -> dict[str, Any]:
    """The figures a finished step reports, read from what it wrote."""
    try:
        if step.name == "tests":
            tail = step.result.get("output_tail", "")
            counts = dict(
                (word, int(n))
                for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", tail)
            )
            return counts
        if step.name in ("throughput", "attention", "generation"):
            data = json.loads((out / f"{step.name}.json").read_text())
            if step.name == "throughput":
                keys = ("variant", "tokens_per_sec", "mfu", "peak_source", "speedup")
            elif step.name == "attention":
                keys = ("context", "n_head", "loop_ms", "fused_ms", "speedup", "fused_peak_mib")
            else:
                keys = ("regime", "batch", "cached_tokens_per_sec", "uncached_tokens_per_sec")
            return {"rows": [{k: r.get(k) for k in keys} for r in data["rows"]]}
        if step.name == "sweep" and step.run_dir is not None:
            jobs = sorted(p for p in step.run_dir.iterdir() if (p / "summary.json").is_file())
            summaries = [json.loads((p / "summary.json").read_text()) for p in jobs]
            times = [(s.get("started"), s.get("finished")) for s in summaries]
            overlap = len(times) == 2 and all(t[0] is not None for t in times)
            overlap = overlap and times[0][0] < times[1][1] and times[1][0] < times[0][1]
            return {"jobs": len(summaries), "ran_at_once": overlap}
        if step.run_dir is not None:
            return last_logged(step.run_dir)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return {"unreadable": f"{type(error).__name__}: {error}"}
    return {}


def run_step(step: Step, out: Path, timeout_s: float, env: dict[str, str]) -> None:
    log = out / f"{step.name}.log"
    started = time.monotonic()
    with log.open("w") as f:
        try:
            proc = subprocess.run(
                step.command,
                cwd=REPO,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
            )
            status = "pass" if proc.returncode == 0 else f"fail (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timeout ({timeout_s:.0f} s)"
    text = log.read_text(errors="replace")
    step.result = {
        "status": status,
        "seconds": round(time.monotonic() - started, 1),
        "log": str(log),
        "output_tail": text[-3000:],
    }
    step.result["figures"] = figures(step, out)


def short(figures: dict[str, Any]) -> str:
    """One line of a step's figures for the summary table."""
    parts = []
    for key, value in figures.items():
        if key == "rows":
            for row in value:
                parts.append(", ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
        else:
            parts.append(f"{key}={_fmt(value)}")
    return "; ".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def print_summary(steps: list[Step], header: str) -> None:
    print(f"\n{header}")
    print(f"{'step':<20} {'status':<16} {'s':>6}  figures")
    for step in steps:
        r = step.result
        seconds = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        figures = short(r.get("figures", {}))
        print(f"{step.name:<20} {r.get('status', '-'):<16} {seconds:>6}  {figures}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder for the logs and the JSON")
    p.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all steps")
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run every step at toy sizes on the CPU (checks the commands, not the GPU)",
    )
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, tiktoken = data_dirs()
    if args.dry_run or args.cpu_smoke:
        n_gpus, name = 1, "(CPU smoke run)" if args.cpu_smoke else "(dry run)"
    else:
        n_gpus, name = cuda_devices()
    steps = plan(out, max(n_gpus, 1), cpu_smoke=args.cpu_smoke)
    report: dict[str, Any] = {
        "gpus": n_gpus,
        "gpu": name,
        "data_dir": str(data),
        "tiktoken_cache_dir": str(tiktoken),
        "budget_s": args.budget,
    }
    if args.dry_run:
        for step in steps:
            print(
                f"{step.name} (at most {step.timeout_s} s): {step.what}\n  {' '.join(step.command)}"
            )
        return 0
    if n_gpus == 0:
        report["status"] = "skipped: torch sees no CUDA GPU here"
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        print(f"gpu_check: {report['status']}; nothing was run ({out / 'gpu_check.json'})")
        return 0
    modules = missing_modules()
    if modules:
        print(
            f"gpu_check: this Python ({sys.executable}) cannot import {', '.join(modules)}: "
            "install the package first (README, Install; offline: pip install --no-index "
            "--find-links <wheels> ...)",
            file=sys.stderr,
        )
        return 2
    missing = missing_data(data, tiktoken)
    if missing:
        print(
            "gpu_check: the run is offline and needs these files first (set LLM_SCRATCH_DATA_DIR "
            f"and TIKTOKEN_CACHE_DIR, or copy the shared data folder): {', '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        LLM_SCRATCH_DATA_DIR=str(data),
        TIKTOKEN_CACHE_DIR=str(tiktoken),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        LLM_SCRATCH_LOG_DIR=str(out / "outputs"),
    )
    started = time.monotonic()
    for step in steps:
        left = args.budget - (time.monotonic() - started)
        if left < 20:
            step.result = {"status": "skipped (budget)"}
            continue
        print(f"gpu_check: {step.name}: {step.what} ...", flush=True)
        run_step(step, out, min(step.timeout_s, left), env)
        print(f"gpu_check: {step.name}: {step.result['status']} in {step.result['seconds']} s")
    report["seconds"] = round(time.monotonic() - started, 1)
    report["steps"] = {s.name: {"what": s.what, "command": s.command, **s.result} for s in steps}
    ok = all(s.result.get("status") == "pass" for s in steps)
    report["status"] = "pass" if ok else "failures (see steps)"
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print_summary(
        steps, f"GPU check on {n_gpus} x {name}: {report['status']}, {report['seconds']} s"
    )
    print(f"JSON: {out / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
