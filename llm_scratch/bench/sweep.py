"""Time to a verdict: where a sweep's wall time goes, job by job.

Runs real sweeps (``python training/run_experiment.py -m ...``, the subprocess launcher: one
process per job) with the :class:`~llm_scratch.train.timing.PhaseTimes` callback added, and
splits each job's wall time, from its process start to its exit, into phases:

- ``startup``: the interpreter, imports, composing the config, checking it, claiming the run
  directory; ``data``: building the data module and its ``setup``; ``setup``: loggers,
  callbacks, the trainer; ``model``: building the model; ``fit setup``: Lightning's own start
  (strategy, optimizer, restoring a checkpoint);
- ``steps``: the training batches (forward, backward, optimizer step); ``loop``: the rest of
  the training loop (loading batches, logging, progress);
- ``validation`` (sampling excluded), ``sampling`` (the text sampler at each validation),
  ``checkpoints`` (``trainer.save_checkpoint``: gathering the state and writing the file);
- ``finish``: from the end of training to the exit (summary, loggers).

``launcher`` is the sweep's time outside its jobs: before the first, between two, after the
last. Each phase is measured between two timestamps, so they add up to the wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llm_scratch.bench.common import REPO, load_average, machine_info, print_table

PHASES = (
    "startup",
    "data",
    "setup",
    "model",
    "fit setup",
    "steps",
    "loop",
    "validation",
    "sampling",
    "checkpoints",
    "finish",
)
TIMING = [
    "+callbacks.phase_times._target_=llm_scratch.train.timing.PhaseTimes",
    "+callbacks.phase_times.output_dir=${paths.output_dir}",
]
# The sweeps, by name: their overrides (the job count and seeds come from the options)
NANO = ["model=gpt-nano", "trainer.accelerator=cpu"]


def _overlap(intervals: list[list[float]], start: float, end: float) -> float:
    """Seconds of ``intervals`` ([start, end, ...]) that fall inside [start, end]."""
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b, *_ in intervals)


def job_phases(times: dict[str, Any]) -> dict[str, Any]:
    """A job's phases (seconds) from its ``phase_times.json``."""
    marks = dict(times["marks"])
    start, end = times["process_start"], times["exit"]
    setup, train_start = times["setup"], times.get("train_start", times["setup"])
    train_end = times.get("train_end", train_start)
    vals, samples, saves = times["validations"], times["samples"], times["saves"]

    def net(a: float, b: float) -> float:
        """[a, b] less the validations and checkpoint saves inside it."""
        return (b - a) - _overlap(vals, a, b) - _overlap(saves, a, b)

    steps = sum(b - a for a, b in times["steps"])
    sampling = sum(b - a for a, b in samples)
    phases = {
        "startup": marks["data"] - start,
        "data": (marks["data_built"] - marks["data"]) + net(marks["fit"], setup),
        "setup": marks["model"] - marks["data_built"],
        "model": marks["fit"] - marks["model"],
        "fit setup": net(setup, train_start),
        "steps": steps,
        "loop": net(train_start, train_end) - steps,
        "validation": sum(b - a for a, b in vals) - sampling,
        "sampling": sampling,
        "checkpoints": sum(b - a for a, b, _ in saves),
        "finish": net(train_end, end),
    }
    return {
        "wall": end - start,
        "phases": phases,
        "steps": len(times["steps"]),
        "start": start,
        "end": end,
        "checkpoint_writes": [
            {"seconds": b - a, "bytes": size} for a, b, size in times.get("writes", [])
        ],
    }


def run_sweep(
    name: str, overrides: list[str], jobs: int, workdir: Path, show: bool = True
) -> dict[str, Any]:
    """Run one sweep of ``jobs`` jobs (seeds 1..jobs) and return its jobs' phases."""
    sweep_dir = workdir / name
    command = [
        sys.executable,
        "training/run_experiment.py",
        "-m",
        *overrides,
        f"seed={','.join(str(s) for s in range(1, jobs + 1))}",
        f"hydra.sweep.dir={sweep_dir}",
        *TIMING,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    launched = time.time()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    finished = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"the sweep {name} failed:\n{done.stderr[-3000:]}")
    found = sorted(sweep_dir.glob("*/phase_times.json"), key=lambda p: p.stat().st_mtime)
    if len(found) != jobs:
        raise RuntimeError(f"the sweep {name} left {len(found)} phase_times.json, not {jobs}")
    results = []
    for path in found:
        job = job_phases(json.loads(path.read_text()))
        job["job"] = path.parent.name
        job["kept_bytes"] = sum(p.stat().st_size for p in path.parent.rglob("*.ckpt"))
        results.append(job)
    results.sort(key=lambda j: j["start"])
    # the launcher: before the first job, between two, after the last (a job's start is read
    # to 1/100 s from /proc: clipped at 0 where two jobs seem to touch)
    edges = [launched, *(t for j in results for t in (j["start"], j["end"])), finished]
    gaps = [max(0.0, b - a) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    for job, gap in zip(results, gaps, strict=False):
        job["launcher_before"] = gap
    sweep = {
        "name": name,
        "command": " ".join(command[1:]),
        "wall": finished - launched,
        "launcher": sum(gaps),
        "launcher_after": gaps[-1],
        "jobs": results,
    }
    if show:
        _print(sweep)
    return sweep


def _print(sweep: dict[str, Any]) -> None:
    rows = []
    for job in sweep["jobs"]:
        share = job["phases"]["steps"] / job["wall"] if job["wall"] else 0.0
        rows.append(
            [
                job["job"],
                f"{job['wall']:.1f}",
                *(f"{job['phases'][p]:.2f}" for p in PHASES),
                f"{job['launcher_before']:.2f}",
                f"{100 * share:.0f}%",
                f"{job['kept_bytes'] / 1e6:.0f}",
            ]
        )
    total = sweep["wall"]
    steps = sum(j["phases"]["steps"] for j in sweep["jobs"])
    print_table(
        f"sweep {sweep['name']}: {len(sweep['jobs'])} jobs in {total:.1f} s "
        f"(training steps {100 * steps / total:.0f}%, launcher {sweep['launcher']:.1f} s)",
        ["job", "wall s", *PHASES, "launcher", "steps %", "kept MB"],
        rows,
        note=f"python {sweep['command']}",
    )


def checkpoint_save(model: str, workdir: Path, show: bool = True) -> dict[str, Any]:
    """Seconds to save a checkpoint of ``model`` (a GPTConfig preset) with AdamW's state, and its
    weights alone, the way training does (AtomicCheckpointIO: a temporary file, fsync, rename),
    against writing the same bytes to the same disk (write, fsync): serialisation's cost."""
    import torch

    from llm_scratch.model import GPT, GPTConfig
    from llm_scratch.train.checkpointing import AtomicCheckpointIO

    net = GPT(GPTConfig.from_name(model))
    optimizer = torch.optim.AdamW(net.parameters())
    for p in net.parameters():  # one step with zero gradients: AdamW's two moments exist
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    cases = {
        "full": {"state_dict": state, "optimizer_states": [optimizer.state_dict()]},
        "weights only": {"state_dict": state},
    }
    rows, results = [], {}
    for name, checkpoint in cases.items():
        path = workdir / f"{name.replace(' ', '_')}.ckpt"
        start = time.perf_counter()
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
        save = time.perf_counter() - start
        data = path.read_bytes()
        copy = workdir / "raw.bin"
        start = time.perf_counter()
        with copy.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        raw = time.perf_counter() - start
        copy.unlink()
        path.unlink()
        results[name] = {"bytes": len(data), "save_s": save, "raw_write_s": raw}
        mb = len(data) / 1e6
        rows.append([name, f"{mb:.0f}", f"{save:.2f}", f"{raw:.2f}", f"{save / raw:.2f}x"])
        del data
    if show:
        print_table(
            f"saving a {model} checkpoint ({net.num_params():,} parameters)",
            ["checkpoint", "MB", "save s", "write the bytes s", "save / write"],
            rows,
        )
    return {"model": model, **results}


def run(
    jobs: int = 4,
    steps: int = 20,
    verdict_cpu: int = 0,
    book: bool = False,
    overrides: list[str] | None = None,
    workdir: str | None = None,
    show: bool = True,
    save_model: str | None = None,
) -> dict[str, Any]:
    """The sweeps asked for: ``jobs`` gpt-nano jobs of ``steps`` steps (0: none),
    ``verdict_cpu`` jobs of ``experiment=verdict_cpu``, one 124M ``verdict_book`` job; with
    ``save_model``, the time to save that model's checkpoint against writing its bytes."""
    plan = []
    if jobs:
        plan.append((f"gpt-nano_{steps}steps", [*NANO, f"trainer.max_steps={steps}"], jobs))
    if verdict_cpu:
        plan.append(("verdict_cpu", ["experiment=verdict_cpu"], verdict_cpu))
    if book:
        plan.append(("verdict_book", ["experiment=verdict_book", "trainer.accelerator=cpu"], 1))
    if not plan and not save_model:
        raise ValueError("nothing to run: give --jobs, --verdict-cpu, --book or --save-model")
    plan = [(name, [*o, *(overrides or [])], n) for name, o, n in plan]
    with tempfile.TemporaryDirectory(prefix="llm_scratch_bench_sweep_", dir=workdir) as tmp:
        sweeps = [run_sweep(name, o, n, Path(tmp), show) for name, o, n in plan]
        saving = checkpoint_save(save_model, Path(tmp), show) if save_model else None
    return {
        "machine": machine_info("cpu"),
        "load_avg_1min_after": load_average(),
        "sweeps": sweeps,
        "checkpoint_save": saving,
    }
