"""Prepare: corpus preparation against nanoGPT's, and training start-up from the shards.

1. The same JSON Lines file prepared by ``training/prepare_data.py`` (GPT-2 BPE) and by nanoGPT's
   ``data/openwebtext/prepare.py`` (benchmarks/nanogpt_prepare.py: ``datasets`` ``map`` then a
   uint16 memmap), with the same number of processes, alternated ``--repeats`` times: MB/s and
   tokens/s of the whole process (start-up and imports included), and the peak RSS of the main
   process and of its largest worker.
2. ``--big-jsonl``: ours alone on a larger file: throughput and peak RSS, which must not grow
   with the corpus.
3. Training start-up: seconds from launching ``training/run_experiment.py`` to the end of its
   first optimizer step, and the training process's peak RSS, on Tiny Shakespeare (GPT-2 BPE)
   and on each prepared dataset, with the same model, batch and context; each run twice, the
   second (warm page cache, shards' sha256 already checked) reported, the first beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

from llm_scratch.bench.common import REPO, machine_info, print_table
from llm_scratch.errors import UserError

MB = 1e6
# Peak RSS: the process's own high-water mark (VmHWM), not ru_maxrss, which Linux carries over
# from the parent that forked it (this benchmark's process, with torch and Lightning loaded).
# CPU seconds: the process and its workers (waited for), user + system: the work done, which a
# machine loaded by other jobs does not change as much as the wall time.
_USAGE = """
def usage():
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    hwm = me.ru_maxrss / 1024
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return {"cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
            "peak_rss_mb": hwm * 1.048576, "peak_rss_worker_mb": kids.ru_maxrss * 1024 / 1e6}
"""
_OURS = (
    _USAGE
    + """
import json, sys, time
start = time.perf_counter()
from llm_scratch.data.prepare import PrepareSettings, prepare
index = prepare(PrepareSettings(source=sys.argv[1], out=sys.argv[2], workers=int(sys.argv[3]),
                                progress="none"), log=lambda _: None)
s = index["splits"]
print(json.dumps({"seconds": time.perf_counter() - start,
                  "tokens": s["train"]["tokens"] + s["val"]["tokens"], **usage()}))
"""
)


def own_peak_rss_mb() -> float:
    """This process's peak RSS in MB: VmHWM where Linux has it, else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


class FirstStepTime(L.Callback):
    """Writes the wall-clock time at the end of the first optimizer step to ``first_step.json``
    in the run directory (a benchmark's instrument)."""

    def __init__(self) -> None:
        self.done = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.done and trainer.global_step >= 1:
            self.done = True
            self.time = time.time()

    def on_train_end(self, trainer, pl_module) -> None:
        path = Path(trainer.default_root_dir) / "first_step.json"
        path.write_text(json.dumps({"time": self.time, "peak_rss_mb": own_peak_rss_mb()}))


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def _run_json(cmd: list[str]) -> tuple[dict[str, Any], float]:
    """Run ``cmd``; its last stdout line as JSON, and the process's wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise UserError(f"{' '.join(cmd[:3])} ... failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def _prepare_ours(jsonl: Path, out: Path, workers: int) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    result, wall = _run_json([sys.executable, "-c", _OURS, str(jsonl), str(out), str(workers)])
    return {**result, "wall_s": wall, "bytes": jsonl.stat().st_size}


def _prepare_nanogpt(jsonl: Path, out: Path, workers: int) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    script = REPO / "benchmarks" / "nanogpt_prepare.py"
    result, wall = _run_json(
        [sys.executable, str(script), str(jsonl), str(out), f"--num-proc={workers}"]
    )
    return {**result, "wall_s": wall}


def _rates(r: dict[str, Any]) -> dict[str, float]:
    return {
        "MB_per_s": r["bytes"] / MB / r["wall_s"],
        "Mtokens_per_s": r["tokens"] / 1e6 / r["wall_s"],
        "MB_per_cpu_s": r["bytes"] / MB / r["cpu_s"],
    }


def _row(name: str, r: dict[str, Any]) -> list[Any]:
    rates = _rates(r)
    return [
        name, r["bytes"] / MB, r["tokens"] / 1e6, r["wall_s"], rates["MB_per_s"],
        rates["Mtokens_per_s"], r["cpu_s"], rates["MB_per_cpu_s"], r["peak_rss_mb"],
        r["peak_rss_worker_mb"],
    ]  # fmt: skip


def _startup(data: list[str], run_dir: Path, steps_args: list[str]) -> dict[str, float]:
    """Seconds from launch to the end of the first optimizer step, and the peak RSS (MB)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        sys.executable,
        str(REPO / "training" / "run_experiment.py"),
        *data,
        *steps_args,
        f"hydra.run.dir={run_dir}",
        "+callbacks.first_step._target_=llm_scratch.bench.prepare.FirstStepTime",
    ]
    launched = time.time()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, err = proc.communicate()
    err = err.decode(errors="replace")
    if proc.returncode != 0:
        raise UserError(f"training on {' '.join(data)} failed: {err.strip()[-500:]}")
    first = json.loads((run_dir / "first_step.json").read_text())
    return {"first_step_s": first["time"] - launched, "peak_rss_mb": first["peak_rss_mb"]}


def run(
    jsonl: str,
    big_jsonl: str | None = None,
    workers: int = 2,
    repeats: int = 1,
    workdir: str | None = None,
    training: bool = True,
    model: str = "gpt-nano",
) -> dict[str, Any]:
    paths = [Path(p).expanduser() for p in [jsonl] + ([big_jsonl] if big_jsonl else [])]
    for p in paths:
        if not p.is_file():
            raise UserError(f"--jsonl {p}: no such file; give a JSON Lines file with a text field.")
    if repeats < 1 or workers < 1:
        raise UserError("--repeats and --workers must be at least 1.")
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_", dir=workdir))
    result: dict[str, Any] = {
        "machine": machine_info(), "workers": workers, "jsonl": paths[0].name,
        "big_jsonl": paths[1].name if big_jsonl else None, "repeats": repeats,
    }  # fmt: skip
    try:
        # 1. ours vs nanoGPT's on the same file, alternated
        ours, ref = [], []
        for _ in range(repeats):
            ours.append(_prepare_ours(paths[0], tmp / "ours", workers))
            ref.append(_prepare_nanogpt(paths[0], tmp / "nanogpt", workers))
        best_ours = min(ours, key=lambda r: r["wall_s"])
        best_ref = min(ref, key=lambda r: r["wall_s"])
        rows = [_row("llm_scratch prepare_data", best_ours), _row("nanoGPT prepare.py", best_ref)]
        speedup = _rates(best_ours)["MB_per_s"] / _rates(best_ref)["MB_per_s"]
        cpu_ratio = min(r["cpu_s"] for r in ref) / min(r["cpu_s"] for r in ours)
        result["compare"] = {
            "ours": ours, "nanogpt": ref, "speedup_MB_per_s": speedup, "cpu_ratio": cpu_ratio,
        }  # fmt: skip
        datasets = {"80MB": tmp / "ours"}
        # 2. the larger file: ours alone
        if big_jsonl:
            big = _prepare_ours(paths[1], tmp / "big", workers)
            rows.append(_row(f"llm_scratch, {paths[1].name}", big))
            result["big"] = big
            datasets["big"] = tmp / "big"
        print_table(
            f"Preparing {paths[0].name} with {workers} processes (GPT-2 BPE)",
            [
                "",
                "MB",
                "M tokens",
                "s",
                "MB/s",
                "M tokens/s",
                "CPU s",
                "MB/CPU-s",
                "peak RSS MB",
                "worker RSS MB",
            ],  # fmt: skip
            rows,
            note=f"ours / nanoGPT: {speedup:.2f}x MB/s, {cpu_ratio:.2f}x less CPU; whole "
            f"processes (start-up included), best of {repeats}; load average "
            f"{machine_info()['load_avg_1min']}",
        )
        # 3. training start-up from the shards vs Tiny Shakespeare
        if training:
            common = [
                f"model={model}", "trainer.accelerator=cpu", "trainer.max_steps=1",
                "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
                "trainer.enable_progress_bar=false", "callbacks.text_sampler=null",
                "data.batch_size=8", "data.context_length=256", "logger=csv",
            ]  # fmt: skip
            cases = {"Tiny Shakespeare (data=shakespeare_bpe)": ["data=shakespeare_bpe"]}
            for name, path in datasets.items():
                size = sum(p.stat().st_size for p in path.glob("*.bin")) / MB
                label = f"shards, {name} source ({size:,.0f} MB of shards)"
                cases[label] = ["data=shards", f"data.path={path}"]
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
            for name, data in cases.items():  # the first run of each: hashes, cold caches
                runs[name].append(_startup(data, tmp / "run", common))
            for _ in range(repeats):  # then the cases alternated: they share the machine's load
                for name, data in cases.items():
                    runs[name].append(_startup(data, tmp / "run", common))
            starts, rows = {}, []
            for name, measured in runs.items():
                best = min(measured[1:], key=lambda r: r["first_step_s"])
                starts[name] = {"first": measured[0], "runs": measured[1:], "best": best}
                rows.append(
                    [name, best["first_step_s"], measured[0]["first_step_s"], best["peak_rss_mb"]]
                )
            result["startup"] = starts
            print_table(
                f"Training start-up: launch to the end of the first optimizer step ({model}, "
                "batch 8 x 256)",
                ["", "first step s", "(first run) s", "peak RSS MB"],
                rows,
                note=f"best of {repeats} alternated runs after a first one each (which hashes "
                "the shards once, cold caches)",
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
