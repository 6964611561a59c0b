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

With ``--before DIR`` (a checkout of earlier code), every sweep also runs there, alternated with
today's, and both are summed up the same way, from files any version writes: the sweep's wall
time, the training share (each job's tokens over its median logged tokens/s, over the wall
time) and the checkpoint bytes a job keeps. Start-up is timed in both too: ``import torch``,
``--help`` and a 2-step gpt-nano run, in alternated rounds.
"""

from __future__ import annotations

import csv
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


def _launch(command: list[str], repo: Path, what: str) -> tuple[float, float]:
    """Run ``command`` in the checkout ``repo`` (its package first on the path); (start, end)."""
    env = dict(os.environ, PYTHONPATH=str(repo))
    launched = time.time()
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    finished = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return launched, finished


def _sweep_command(overrides: list[str], jobs: int, sweep_dir: Path) -> list[str]:
    seeds = ",".join(str(s) for s in range(1, jobs + 1))
    return [
        sys.executable,
        "training/run_experiment.py",
        "-m",
        *overrides,
        f"seed={seeds}",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def training_seconds(job_dir: Path) -> float | None:
    """A job's training time as the goal was set: the tokens it trained on over its median
    logged tokens/s (from its metrics.csv, any version's); None if it logged neither."""
    rates, tokens = [], 0.0
    for path in job_dir.rglob("metrics.csv"):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get("train/tokens_per_sec"):
                    rates.append(float(row["train/tokens_per_sec"]))
                if row.get("train/tokens_seen"):
                    tokens = max(tokens, float(row["train/tokens_seen"]))
    if not rates or not tokens:
        return None
    rates.sort()
    return tokens / rates[len(rates) // 2]


def coarse(sweep_dir: Path, wall: float) -> dict[str, Any]:
    """The figures any version's sweep gives: wall time, training share, checkpoint bytes kept."""
    jobs = sorted(p.parent for p in sweep_dir.glob("*/.hydra"))
    each = [training_seconds(j) for j in jobs]
    training = None if None in each else sum(each)
    kept = [sum(p.stat().st_size for p in j.rglob("*.ckpt")) for j in jobs]
    return {
        "wall": wall,
        "jobs": len(jobs),
        "training_s": training,
        "training_share": None if training is None else training / wall,
        "kept_bytes_max": max(kept),
    }


def run_sweep(
    name: str, overrides: list[str], jobs: int, workdir: Path, show: bool = True
) -> dict[str, Any]:
    """Run one sweep of ``jobs`` jobs (seeds 1..jobs) and return its jobs' phases."""
    sweep_dir = workdir / name
    command = [*_sweep_command(overrides, jobs, sweep_dir), *TIMING]
    launched, finished = _launch(command, REPO, f"the sweep {name}")
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
        # publishable: the temporary folder it ran in is not a path a reader has
        "command": " ".join(command[1:]).replace(str(workdir), "<workdir>"),
        "wall": finished - launched,
        "launcher": sum(gaps),
        "launcher_after": gaps[-1],
        "jobs": results,
        "coarse": coarse(sweep_dir, finished - launched),
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


def _commit(repo: Path) -> str | None:
    """The commit checked out in ``repo`` (None outside git)."""
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or None


def before_sweep(
    name: str, overrides: list[str], jobs: int, before: Path, workdir: Path
) -> dict[str, Any]:
    """The same sweep run in the checkout ``before`` (no phase times: it may not have them)."""
    sweep_dir = workdir / f"{name}_before"
    command = _sweep_command(overrides, jobs, sweep_dir)
    launched, finished = _launch(command, before, f"the sweep {name} in {before}")
    return coarse(sweep_dir, finished - launched)


STARTUP = {
    "import torch": ["-c", "import torch"],
    "--help": ["training/run_experiment.py", "--help"],
    "2-step gpt-nano run": [
        "training/run_experiment.py",
        *NANO,
        "trainer.max_steps=2",
    ],
}


def startup(
    checkouts: dict[str, Path],
    rounds: int,
    workdir: Path,
    commands: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Seconds of each start-up command (:data:`STARTUP`, ``import torch`` among them) in each
    checkout, alternated round by round; the median of the rounds, and its ratio to ``import
    torch`` in the same checkout."""
    commands = commands or STARTUP
    times: dict[str, dict[str, list[float]]] = {c: {k: [] for k in commands} for c in checkouts}
    for r in range(rounds):
        for label, repo in checkouts.items():
            for what, args in commands.items():
                extra = [f"hydra.run.dir={workdir}/startup_{label}_{r}"] if "run" in what else []
                start, end = _launch([sys.executable, *args, *extra], repo, what)
                times[label][what].append(end - start)
    result = {}
    for label, by_command in times.items():
        medians = {what: sorted(t)[len(t) // 2] for what, t in by_command.items()}
        result[label] = {
            what: {
                "seconds": t,
                "median": medians[what],
                "x_torch": t_med / medians["import torch"],
            }
            for (what, t), t_med in zip(by_command.items(), medians.values(), strict=True)
        }
    return result


def _print_comparison(sweeps: list[tuple[str, dict, dict]], starts: dict[str, Any]) -> None:
    rows = []
    for what in STARTUP:
        before, after = starts["before"][what], starts["after"][what]
        rows.append(
            [
                f"start-up: {what}",
                f"{before['median']:.2f} s ({before['x_torch']:.1f}x torch)",
                f"{after['median']:.2f} s ({after['x_torch']:.1f}x torch)",
            ]
        )
    for name, before, after in sweeps:
        for label, key, fmt in (
            ("wall", "wall", "{:.0f} s"),
            ("training share", "training_share", "{:.0%}"),
            ("kept per job", "kept_bytes_max", "{:.0f} MB"),
        ):
            scale = 1e-6 if key == "kept_bytes_max" else 1
            values = [before[key], after[key]]
            rows.append(
                [
                    f"{name} ({after['jobs']} job{'s' if after['jobs'] != 1 else ''}): {label}",
                    *("n/a" if v is None else fmt.format(v * scale) for v in values),
                ]
            )
    print_table("before and after", ["", "before", "after"], rows)


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
        AtomicCheckpointIO().write_checkpoint(checkpoint, path)  # in place, not in the background
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
    before: str | None = None,
    startup_rounds: int = 3,
) -> dict[str, Any]:
    """The sweeps asked for: ``jobs`` gpt-nano jobs of ``steps`` steps (0: none),
    ``verdict_cpu`` jobs of ``experiment=verdict_cpu``, one 124M ``verdict_book`` job; with
    ``save_model``, the time to save that model's checkpoint against writing its bytes; with
    ``before`` (a checkout), each sweep and the start-up there too, alternated with today's."""
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
    old = Path(before).resolve() if before else None
    if old and not (old / "training" / "run_experiment.py").is_file():
        raise ValueError(f"--before {before}: not a checkout of this package")
    sweeps, befores, starts = [], [], None
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llm_scratch_bench_sweep_", dir=workdir) as tmp:
        for name, o, n in plan:
            if old:  # the earlier code first, then today's, sweep by sweep
                befores.append(before_sweep(name, o, n, old, Path(tmp)))
            sweeps.append(run_sweep(name, o, n, Path(tmp), show))
        saving = checkpoint_save(save_model, Path(tmp), show) if save_model else None
        if old:
            starts = startup({"before": old, "after": REPO}, startup_rounds, Path(tmp))
    if old and show:
        rows = [(s["name"], b, s["coarse"]) for s, b in zip(sweeps, befores, strict=True)]
        _print_comparison(rows, starts)
    return {
        "machine": machine_info("cpu"),
        "load_avg_1min_after": load_average(),
        "commit": _commit(REPO),
        "sweeps": sweeps,
        "checkpoint_save": saving,
        "before": {"commit": _commit(old), "sweeps": befores, "startup": starts} if old else None,
    }
