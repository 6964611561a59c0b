"""Sweeps: the per-job-process launcher, DDP inside a multirun, parallel jobs, bf16, the report,
seeds in every ablation, and a stopped sweep continued in its own directory."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from hydra_plugins.llm_scratch_launcher.continuation import continue_command
from hydra_plugins.llm_scratch_launcher.subprocess_launcher import SubprocessLauncher
from llm_scratch.errors import UserError
from llm_scratch.report import collect_jobs
from llm_scratch.sweep_env import CONTINUE_ENV
from llm_scratch.train.config_store import ABLATIONS
from llm_scratch.train.job import train
from tests.helpers import FAST, REPO, column, compose_config, read_metrics

TINY_JOB = [
    "model=gpt-nano",
    "trainer.accelerator=cpu",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
]


def run_sweep(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "training" / "run_experiment.py"), "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LLM_SCRATCH_LOG_DIR": str(cwd / "outputs")},
    )


def job_dirs(sweep: Path) -> list[str]:
    return sorted(p.name for p in sweep.iterdir() if p.is_dir())


@pytest.mark.slow
def test_ddp_inside_a_multirun_gives_one_directory_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_sweep(
        [
            *TINY_JOB,
            "trainer=ddp",
            "trainer.devices=2",
            "model.pre_norm=true,false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # exactly one directory per job, no second sweep tree made by the DDP child processes
    assert job_dirs(sweep) == ["0", "1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["global_step"] == 2
        assert len(column(read_metrics(sweep / job), "val/loss")) == 1
    pre_norm = [OmegaConf.load(sweep / j / "config.yaml").model.pre_norm for j in ("0", "1")]
    assert pre_norm == [True, False]


@pytest.mark.slow
def test_parallel_launcher_runs_two_jobs_at_once_and_the_report_reads_them(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_sweep(
        [
            *TINY_JOB,
            "model.tie_weights=true,false",
            "hydra.launcher.parallel_jobs=2",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_dirs(sweep) == ["0", "1"]
    a, b = (json.loads((sweep / j / "summary.json").read_text()) for j in ("0", "1"))
    assert a["started"] < b["finished"] and b["started"] < a["finished"], "jobs did not overlap"
    assert b["num_params"] - a["num_params"] == 50257 * 48  # untied: its own 50257 x 48 head
    # a quiet console: no config tree (each job's is in its directory; print_config=true shows it)
    assert "Each job's config: <its directory>/config.yaml" in result.stdout + result.stderr
    assert "optimizer" not in result.stdout, result.stdout[-2000:]

    out = subprocess.run(
        [sys.executable, str(REPO / "training" / "report.py"), str(sweep)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "2 jobs" in out.stdout
    report = (sweep / "report.md").read_text()
    rows = [
        line for line in report.splitlines() if line.startswith("| 0 ") or line.startswith("| 1 ")
    ]
    assert len(rows) == 2
    assert "tie_weights=True" in rows[0] and "tie_weights=False" in rows[1]
    assert f"{a['num_params']:,}" in rows[0] and f"{b['num_params']:,}" in rows[1]
    assert f"{a['metrics']['val/loss']:.3f}" in rows[0]
    for png in ("train_loss.png", "val_loss.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in report
    assert report.count("Every effort moves you") == 2  # one sample per job


def test_report_on_a_directory_without_jobs_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="holds no jobs"):
        collect_jobs(tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO / "training" / "report.py"), str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_gpu_slots_give_each_parallel_job_its_own_devices():
    assert SubprocessLauncher(devices_per_job=1, devices=[0, 1, 2])._device_groups() == [
        "0",
        "1",
        "2",
    ]
    assert SubprocessLauncher(
        parallel_jobs=2, devices_per_job=1, devices=[0, 1, 2]
    )._device_groups() == ["0", "1"]
    assert SubprocessLauncher(devices_per_job=2, devices=[0, 1, 2, 3])._device_groups() == [
        "0,1",
        "2,3",
    ]
    assert SubprocessLauncher(parallel_jobs=3)._device_groups() == [None, None, None]
    with pytest.raises(UserError, match="devices_per_job=2 but only 1 GPU"):
        SubprocessLauncher(devices_per_job=2, devices=[0])._device_groups()


@pytest.mark.slow
def test_bf16_mixed_on_cpu_trains_with_a_finite_falling_loss(tmp_path):
    run = tmp_path / "run"
    cfg = compose_config(
        [
            *FAST,
            "trainer=bf16",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=3",
            "optimizer.lr=3e-3",
        ],
        run,
    )
    metrics = train(cfg)
    losses = column(read_metrics(run), "train/loss")
    assert len(losses) == 27 and all(map(lambda x: x == x and abs(x) < 1e3, losses))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert json.loads((run / "summary.json").read_text())["precision"] == "bf16-mixed"
    assert metrics["val/loss"] < 10.5


def sweep_jobs(params: dict, given: list[str]) -> list[list[str]]:
    """The jobs Hydra's sweeper makes of ``-m <given>`` on a config with these sweep ``params``:
    the params, then the command line's overrides (a swept key there replaces the config's)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(
        [*(f"{k}={v}" for k, v in params.items()), *given]
    )
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def test_ablation_experiments_define_their_sweeps(tmp_path):
    # every setting with seeds 1, 2, 3
    expected = {
        "norm": ({"model.pre_norm", "scheduler.warmup_fraction", "scheduler.warmup_steps"}, 4),
        "init": ({"model.layer_init"}, 2),
        "attention": ({"model.attention"}, 2),
        "tying": ({"model.tie_weights"}, 2),
        "grid": ({"model.pre_norm", "model.layer_init", "model.attention"}, 8),
        "lr": (
            {
                "optimizer.lr",
                "scheduler.warmup_fraction",
                "scheduler.name",
                "scheduler.min_lr",
                "scheduler.warmup_steps",
            },
            12,
        ),
    }
    assert set(expected) == set(ABLATIONS)
    for name, (keys, settings) in expected.items():
        for scale in ("", "_cpu"):
            cfg = compose_config([f"experiment=ablation_{name}{scale}"], tmp_path)
            params = OmegaConf.to_container(cfg.hydra.sweeper.params)
            assert set(params) == {"seed", *keys} and params["seed"] == "1,2,3"
            # the book's depth, head and init at both sizes (the CPU size is 192 wide, not 768)
            assert cfg.model.n_layer == 12 and cfg.data.corpus == "verdict"
            assert not cfg.model.tie_weights and cfg.model.weight_init == "pytorch"
            assert cfg.model.n_embd == (768 if scale == "" else 192)
            assert cfg.task_name == f"ablation_{name}{scale}"
            jobs = sweep_jobs(params, [f"experiment=ablation_{name}{scale}"])
            assert len(jobs) == 3 * settings
            # seed first: every setting runs with seed 1 before any runs with seed 2
            assert [j[0] for j in jobs] == [f"seed={s}" for s in (1, 2, 3) for _ in range(settings)]
            assert len({tuple(j[1:]) for j in jobs}) == settings

    # the seeds are one override; plain overrides sweep seeds too
    norm = OmegaConf.to_container(
        compose_config(["experiment=ablation_norm_cpu"], tmp_path).hydra.sweeper.params
    )
    jobs = sweep_jobs(norm, ["experiment=ablation_norm_cpu", "seed=1,2,3,4,5"])
    assert len(jobs) == 20 and [j[0] for j in jobs[::4]] == [f"seed={s}" for s in range(1, 6)]
    assert len(sweep_jobs({}, ["model.pre_norm=true,false", "seed=1,2,3"])) == 6


def test_slurm_launcher_config_composes(tmp_path):
    cfg = compose_config(
        ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
        tmp_path,
    )
    from hydra.utils import get_class

    # submitit's SLURM launcher (Hydra's plugin scan loads its module anew: compared by name)
    bases = get_class(cfg.hydra.launcher._target_).__mro__[1:]
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in {
        f"{c.__module__}.{c.__name__}" for c in bases
    }
    # one task per device, worked out per job (tests/test_slurm.py)
    assert cfg.hydra.launcher.tasks_per_node == "auto" and cfg.hydra.launcher.nodes == "auto"
    # each SLURM job names its sweep for W&B's group, as the subprocess launcher does
    setup = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)["setup"]
    assert setup == [f'export LLM_SCRATCH_SWEEP_ID="train-$(basename "{cfg.hydra.sweep.dir}")"']


def test_norm_sweep_varies_warmup_on_any_base_and_two_warmups_are_refused(tmp_path):
    from llm_scratch.train.optim import SchedulerConfig, lr_multiplier

    cfg = compose_config(["experiment=shakespeare_cpu", "ablation=norm"], tmp_path)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    # the base's warmup_steps=50 would otherwise win over warmup_fraction in every job
    assert cfg.scheduler.warmup_steps == 50 and str(params["scheduler.warmup_steps"]) == "0"
    none = SchedulerConfig(name="constant", warmup_steps=0, warmup_fraction=0.0)
    tenth = SchedulerConfig(name="constant", warmup_steps=0, warmup_fraction=0.1)
    assert lr_multiplier(0, none, 100, 1e-3) == 1.0
    assert lr_multiplier(0, tenth, 100, 1e-3) == pytest.approx(0.1)
    with pytest.raises(UserError, match="both set a warm-up"):
        SchedulerConfig(warmup_steps=5, warmup_fraction=0.1)


# ----------------------------------------------------------------------------- stop and continue
class StopSweepAt(L.Callback):
    """In the sweep job whose directory is named ``job``: at step ``step``, during a training
    batch (``where="train"``) or the validation (``where="validation"``), sends SIGTERM to the
    sweep (the job's parent, which passes it on to its jobs) and waits until it arrives. Another
    run of the same overrides (a reference in another directory) is not stopped."""

    def __init__(self, job: int, step: int, where: str) -> None:
        self.job = str(job)
        self.step = step
        self.where = where

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.where == "train":
            self._stop(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.where == "validation":
            self._stop(trainer)

    def _stop(self, trainer) -> None:
        run_dir = Path(trainer.checkpoint_callback.dirpath).parent
        if run_dir.name != self.job or trainer.global_step != self.step or trainer.received_sigterm:
            return
        os.kill(os.getppid(), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.01)


# gpt-nano, char-level Verdict: 6 steps, a validation every 3, last.ckpt after every step
STOPPABLE = [
    "model=gpt-nano",
    "data.tokenizer=char",
    "data.context_length=32",
    "data.batch_size=8",
    "trainer.accelerator=cpu",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=1",
    "callbacks.text_sampler.max_new_tokens=4",
    "callbacks.periodic_checkpoint.every_n_train_steps=1",
]


def entry(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "training" / "run_experiment.py"), *args]


def cli_env(cwd: Path) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        LLM_SCRATCH_LOG_DIR=str(cwd / "outputs"),
    )


def run_command(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=cwd, env=cli_env(cwd), capture_output=True, text=True, timeout=300
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def printed_command(line: str) -> list[str]:
    """The command a sweep's last line gives, as the shell would split it (``python``: this
    interpreter)."""
    words = shlex.split(line.split(" with: ", 1)[1])
    assert words[0] == "python", line
    return [sys.executable, *words[1:]]


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory``: its bytes and modification time."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv's rows without the timing column (throughput differs between any two runs)."""
    return [
        {k: v for k, v in row.items() if k != "train/tokens_per_sec"}
        for row in read_metrics(run_dir)
    ]


def stop_at(name: str, job: int, step: int, where: str) -> list[str]:
    return [
        f"+callbacks.{name}._target_=tests.test_sweep.StopSweepAt",
        f"+callbacks.{name}.job={job}",
        f"+callbacks.{name}.step={step}",
        f"+callbacks.{name}.where={where}",
    ]


def jobs_of(snapshot_: dict[str, tuple[bytes, int]], *jobs: str) -> dict[str, tuple[bytes, int]]:
    return {k: v for k, v in snapshot_.items() if k.split("/")[0] in jobs}


@pytest.mark.slow
def test_a_stopped_sweep_continues_where_it_stopped(tmp_path):
    # three jobs, seed=1,2,2 (jobs #1 and #2 the same, so that one uninterrupted run is the
    # reference of both): stopped in job #1's validation at step 3 and continued, stopped again
    # in job #2's training batch at step 4 and continued again
    sweep = tmp_path / "sweep"
    args = [
        *STOPPABLE,
        *stop_at("stop_a", job=1, step=3, where="validation"),
        *stop_at("stop_b", job=2, step=4, where="train"),
    ]
    # the uninterrupted job (seed=2), as a single run, alongside the sweep
    ref = tmp_path / "reference"
    reference = subprocess.Popen(
        entry(*args, "seed=2", f"hydra.run.dir={ref}"),
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def stopped_line(out: subprocess.CompletedProcess) -> str:
        assert out.returncode == 143, out.stderr[-3000:]
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: Sweep stopped by SIGTERM"), out.stderr[-3000:]
        assert "ckpt_path" not in last, last
        return last

    first = run_command(entry("-m", *args, "seed=1,2,2", f"hydra.sweep.dir={sweep}"), tmp_path)
    last = stopped_line(first)
    assert "#0 finished; job(s) #1 stopped; job(s) #2 did not start" in last, last
    command = printed_command(last)
    assert command[-1] == f"hydra.sweep.dir={sweep}" and "seed=1,2,2" in command, command
    assert not (sweep / "1" / "summary.json").exists() and not (sweep / "2").exists()
    before = snapshot(sweep)
    overrides = before["1/.hydra/overrides.yaml"][0]
    assert b"seed=2" in overrides and b"ckpt_path" not in overrides

    # the printed command continues it: job #1 from its checkpoint; job #2 is stopped in turn
    second = run_command(command, tmp_path)
    assert (
        "Continuing the sweep: 1 job(s) finished (kept as they are), 1 to continue from their "
        "checkpoints/last.ckpt, 1 to run\n" in second.stdout
    ), second.stdout
    last = stopped_line(second)
    assert "#0, #1 finished; job(s) #2 stopped. Continue" in last, last
    assert printed_command(last) == command
    middle = snapshot(sweep)
    # the finished job: not touched, not even its job_output.log
    assert jobs_of(middle, "0") == jobs_of(before, "0")

    third = run_command(command, tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert (
        "Continuing the sweep: 2 job(s) finished (kept as they are), 1 to continue from their "
        "checkpoints/last.ckpt, 0 to run\n" in third.stdout
    ), third.stdout
    assert jobs_of(snapshot(sweep), "0", "1") == jobs_of(middle, "0", "1")

    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    for job in (sweep / "1", sweep / "2"):
        # the continued job's record is the uninterrupted one's: no row missing or twice, the
        # same losses to the last digit
        assert metrics_rows(job) == metrics_rows(ref)
        assert [int(r["step"]) for r in metrics_rows(job) if r["train/loss"]] == list(range(1, 7))
        assert (job / "samples.jsonl").read_text() == (ref / "samples.jsonl").read_text()
        summary, ref_summary = (json.loads((d / "summary.json").read_text()) for d in (job, ref))
        for metrics in (summary["metrics"], ref_summary["metrics"]):
            del metrics["train/tokens_per_sec"]  # timing
        assert summary["metrics"] == ref_summary["metrics"]
        assert (summary["global_step"], summary["epochs"]) == (6, ref_summary["epochs"])
        assert "continued by the sweep" in (job / "job_output.log").read_text()
    # its overrides are its own: the report groups jobs by them
    assert (sweep / "1" / ".hydra" / "overrides.yaml").read_bytes() == overrides


def test_the_continue_command_is_the_sweeps_own_with_its_directory(tmp_path, monkeypatch):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    odd = tmp_path / "my sweeps" / "it's here"
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)  # python <script>, not -m
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "training/run_experiment.py",
            "-m",
            "logger=[csv,tensorboard]",
            "seed=1,2",
            "hydra.sweep.dir=x",
        ],
    )
    words = shlex.split(continue_command(odd))
    # the shell gives Hydra the same words, and Hydra one quoted directory
    assert words == [
        "python",
        "training/run_experiment.py",
        "-m",
        "logger=[csv,tensorboard]",
        "seed=1,2",
        "hydra.sweep.dir='" + str(odd).replace("'", "\\'") + "'",
    ]
    assert OverridesParser.create().parse_override(words[-1]).value() == str(odd)
    monkeypatch.setattr(sys, "argv", ["training/run_experiment.py", "seed=1"])
    assert shlex.split(continue_command(tmp_path))[2:] == [
        "-m",
        "seed=1",
        f"hydra.sweep.dir={tmp_path}",
    ]
    # a newline in the directory's name: still one line, and bash gives Hydra the directory back
    broken = tmp_path / "line\nbreak"
    printed = continue_command(broken)
    assert "\n" not in printed
    script = "words() { printf '%s\\0' \"$@\"; }; words " + printed.removeprefix("python ")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    last = out.stdout.split("\0")[-2]
    assert OverridesParser.create().parse_override(last).value() == str(broken)


def test_a_directory_holding_another_sweep_is_refused_as_it_is(tmp_path):
    # a sweep of two jobs (its job list, sweep.json), continued with overrides that make three
    sweep = tmp_path / "sweep"
    jobs = [
        {"num": n, "dir": str(n), "overrides": ["model=gpt-nano", f"seed={n + 1}"]} for n in (0, 1)
    ]
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".sweep_job").write_text(json.dumps({"sweep_id": "s1", "num": 0}))
    (sweep / "sweep.json").write_text(json.dumps({"sweep_id": "s1", "jobs": jobs}))
    (sweep / "multirun.yaml").write_text("earlier: sweep\n")
    before = snapshot(sweep)
    out = run_command(
        entry("-m", "model=gpt-nano", "seed=1,2,3", f"hydra.sweep.dir={sweep}"), tmp_path
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    (line,) = error_lines(out.stderr)
    assert (
        f"hydra.sweep.dir={sweep} holds a sweep with other overrides (it holds 2 job(s), " in line
    )
    assert "the overrides given make 3); to continue it give the overrides it was started" in line
    assert snapshot(sweep) == before  # not even Hydra's multirun.yaml rewritten


def test_a_sweep_is_compared_with_the_job_list_it_recorded(tmp_path):
    from hydra_plugins.llm_scratch_launcher.continuation import (
        check_same_sweep,
        claim_job_dir,
        write_manifest,
    )

    asked = {0: ["model=gpt-nano", "seed=1"], 1: ["model=gpt-nano", "seed=2"]}
    dirs = {n: tmp_path / str(n) for n in asked}
    assert check_same_sweep(tmp_path, asked, dirs, whole=True) is False  # nothing there yet
    # the job list and the sweep's id, written once
    sweep_id = write_manifest(tmp_path, asked, dirs)
    listed = (tmp_path / "sweep.json").read_bytes()
    assert json.loads(listed)["sweep_id"] == sweep_id and len(sweep_id) == 32
    assert write_manifest(tmp_path, asked, dirs) == sweep_id
    assert (tmp_path / "sweep.json").read_bytes() == listed
    claim_job_dir(dirs[0], tmp_path, sweep_id, 0)
    assert json.loads((dirs[0] / ".sweep_job").read_text()) == {"sweep_id": sweep_id, "num": 0}
    assert check_same_sweep(tmp_path, asked, dirs, whole=True) is True
    reordered = {n: o[::-1] for n, o in asked.items()}  # the order is no matter
    assert check_same_sweep(tmp_path, reordered, dirs, whole=True) is True
    with pytest.raises(
        UserError,
        match="its job #0 has model=gpt-nano seed=1, the overrides given make model=gpt-nano seed=7",
    ):
        check_same_sweep(tmp_path, {**asked, 0: ["model=gpt-nano", "seed=7"]}, dirs, whole=True)
    with pytest.raises(UserError, match="it holds 2 job.s., the overrides given make 1"):
        check_same_sweep(tmp_path, {0: asked[0]}, {0: dirs[0]}, whole=True)
    # the same jobs in other folders (another hydra.sweep.subdir)
    moved = {n: tmp_path / f"job{n}" for n in asked}
    with pytest.raises(UserError, match="its job #0 is in folder 0, the hydra.sweep.subdir given"):
        check_same_sweep(tmp_path, asked, moved, whole=True)
    (tmp_path / "sweep.json").write_text("{not json")
    with pytest.raises(UserError, match="Cannot read the sweep's job list"):
        check_same_sweep(tmp_path, asked, dirs, whole=True)
    # a sweep from before the markers: refused, not continued in place
    jobs = [{"num": n, "dir": str(n), "overrides": o} for n, o in asked.items()]
    (tmp_path / "sweep.json").write_text(json.dumps({"jobs": jobs}))
    with pytest.raises(UserError, match="started by an earlier version of llm_scratch"):
        check_same_sweep(tmp_path, asked, dirs, whole=True)


def test_a_continued_job_keeps_the_rows_before_its_checkpoint(tmp_path, monkeypatch):
    # as a job killed (SIGKILL) 4 steps after its last checkpoint (step 6) leaves it: rows up to
    # step 10, the last one cut short; samples after the checkpoint
    from lightning.pytorch.loggers import CSVLogger

    from llm_scratch.train.sweep_resume import continued_sweep_job, drop_rows_after_checkpoint

    job = tmp_path / "3"
    (job / "checkpoints").mkdir(parents=True)
    (job / ".sweep_job").write_text(json.dumps({"sweep_id": "s1", "num": 3}))  # the sweep's
    torch.save({"global_step": 6}, job / "checkpoints" / "last.ckpt")
    header = "epoch,step,train/epoch_loss,train/loss,val/loss\r\n"
    rows = [f"0,{s},,{4 - s / 10},\r\n" for s in range(1, 10)]
    rows.insert(3, "0,3,,,3.9\r\n")  # the validation after step 3
    # an epoch that ended at step 6: the continued run logs its row again
    rows.insert(7, "0,6,3.7,,\r\n")
    (job / "metrics.csv").write_text(header + "".join(rows) + "0,10,,3.", newline="")
    samples = [json.dumps({"epoch": 0, "step": s, "text": "x"}) + "\n" for s in (3, 6, 9)]
    (job / "samples.jsonl").write_text("".join(samples))

    logger = CSVLogger(save_dir=str(job), name="", version="")
    assert continued_sweep_job(job) is None  # not a continued sweep job: nothing done
    drop_rows_after_checkpoint([logger], job)
    assert (job / "samples.jsonl").read_text() == "".join(samples)

    monkeypatch.setenv(CONTINUE_ENV, str(job))
    assert continued_sweep_job(tmp_path / "another") is None
    assert continued_sweep_job(job) == str(job / "checkpoints" / "last.ckpt")
    drop_rows_after_checkpoint([logger], job)
    # the continued run logs from step 7 on, a new column too
    logger.log_metrics({"train/loss": 3.3, "train/lr": 0.1}, step=7)
    logger.save()
    with (job / "metrics.csv").open(newline="") as f:
        text = f.read()
    # Lightning's own rewrite for a new column, then its row: rows of steps 1 to 6, once each
    kept = [f"0,{s},,{4 - s / 10},,\r\n" for s in range(1, 7)]
    kept.insert(3, "0,3,,,,3.9\r\n")
    header = "epoch,step,train/epoch_loss,train/loss,train/lr,val/loss\r\n"
    assert text == header + "".join(kept) + ",7,,3.3,0.1,\r\n"
    assert (job / "samples.jsonl").read_text() == "".join(samples[:2])
    # nothing left aside
    assert sorted(p.name for p in job.iterdir()) == [
        ".sweep_job",
        "checkpoints",
        "metrics.csv",
        "samples.jsonl",
    ]


@pytest.mark.slow
def test_a_sweep_stopped_while_its_job_starts_continues_with_the_printed_command(tmp_path):
    # the jobs are stopped before they trained: no checkpoint to continue from; two at a time
    # (the parallel launcher's way, hydra/launcher=gpu_parallel without the GPUs)
    sweep = tmp_path / "sweep"
    args = [*STOPPABLE, "seed=1,2", "hydra.launcher.parallel_jobs=2", f"hydra.sweep.dir={sweep}"]
    parent = subprocess.Popen(
        entry("-m", *args),
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (sweep / "0" / "job_output.log").exists():
        assert parent.poll() is None, parent.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=120)
    assert parent.returncode == 143, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "#0" in last and "finished;" not in last and "ckpt_path" not in last, last
    assert "hydra.launcher.parallel_jobs=2" in last, last
    assert not (sweep / "0" / "checkpoints").exists()
    # what an attempt that logged rows but saved no checkpoint leaves
    (sweep / "0" / "metrics.csv").write_text("epoch,step,train/loss\n0,0,99.0\n")
    (sweep / "0" / "samples.jsonl").write_text('{"epoch": 0, "step": 3, "text": "stale"}\n')

    continued = run_command(printed_command(last), tmp_path)
    assert continued.returncode == 0, continued.stderr[-3000:]
    assert re.search(
        r"Continuing the sweep: 0 job\(s\) finished \(kept as they are\), 0 to continue from "
        r"their checkpoints/last.ckpt, 2 to run \([12] of them started but saved no checkpoint",
        continued.stdout,
    ), continued.stdout
    for job in ("0", "1"):
        rows = read_metrics(sweep / job)
        assert [int(r["step"]) for r in rows if r["train/loss"]] == list(range(1, 7))
        assert "99.0" not in {r["train/loss"] for r in rows}
        assert "stale" not in (sweep / job / "samples.jsonl").read_text()
        assert json.loads((sweep / job / "summary.json").read_text())["global_step"] == 6


def test_a_sweep_directory_in_use_is_refused(tmp_path):
    from hydra_plugins.llm_scratch_launcher.continuation import sweep_lock

    busy = f"in use by a sweep still running .pid {os.getpid()}"
    with sweep_lock(tmp_path), pytest.raises(UserError, match=busy), sweep_lock(tmp_path):
        pass
    with sweep_lock(tmp_path):  # released when the sweep ends
        pass


# ------------------------------------------------------- a sweep deletes only what it wrote itself
# The code that deletes or writes over files when a sweep starts, runs or continues.
SWEEP_CODE = [
    REPO / "hydra_plugins" / "llm_scratch_launcher" / "continuation.py",
    REPO / "hydra_plugins" / "llm_scratch_launcher" / "subprocess_launcher.py",
    REPO / "hydra_plugins" / "llm_scratch_launcher" / "slurm_launcher.py",
    REPO / "llm_scratch" / "train" / "sweep_resume.py",
]
# calls that delete or replace a file or folder (str.replace takes two arguments, Path's one)
_DELETING = {"rmtree", "unlink", "rmdir", "remove", "rename", "truncate", "write_text"}
_DELETING |= {"write_bytes", "atomic_write_text", "atomic_write_bytes", "atomic_open"}


def deletion_sites() -> set[str]:
    """Every function of the sweep code that deletes, empties or writes over a file: a call of
    the above, ``replace(target)``, or ``open`` in a mode that writes."""
    import ast

    found = set()
    for path in SWEEP_CODE:

        def visit(node: ast.AST, scope: list[str], module: str = path.stem) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.ClassDef):
                    visit(child, [*scope, child.name])
                    continue
                if isinstance(child, ast.Call):
                    func = child.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    if name == "open":
                        given = child.args[1:] if isinstance(func, ast.Name) else child.args
                        modes = [*given, *(k.value for k in child.keywords if k.arg == "mode")]
                        reads = not modes or (
                            isinstance(modes[0], ast.Constant) and set(modes[0].value) <= set("rbt")
                        )
                        deletes = not reads
                    else:
                        deletes = name in _DELETING or (name == "replace" and len(child.args) == 1)
                    if deletes:
                        found.add(".".join([module, *scope]))
                visit(child, scope)

        visit(ast.parse(path.read_text()), [])
    return found


def refused(where: Path, call, match: str) -> None:
    """``call`` refuses with one UserError matching ``match`` and leaves ``where`` as it was."""
    before = snapshot(where)
    with pytest.raises(UserError, match=match):
        call()
    assert snapshot(where) == before


def a_sweep(root: Path) -> tuple[Path, str]:
    """A sweep directory of this package with two jobs (its sweep.json), none started."""
    from hydra_plugins.llm_scratch_launcher.continuation import write_manifest

    sweep = root / "sweep"
    sweep.mkdir(parents=True)
    jobs = {0: ["seed=1"], 1: ["seed=2"]}
    return sweep, write_manifest(sweep, jobs, {n: sweep / str(n) for n in jobs})


def notes_in(folder: Path) -> Path:
    """A folder of the user's files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes\n")
    return folder


def probe_prepare_restart(root: Path) -> None:
    from hydra_plugins.llm_scratch_launcher.continuation import claim_job_dir, prepare_restart

    sweep, sweep_id = a_sweep(root)
    job = notes_in(sweep / "0")
    refused(root, lambda: prepare_restart(job, sweep, sweep_id, 0), "0 holds files this sweep")
    claim_job_dir(sweep / "1", sweep, sweep_id, 1)  # job #1's marker: not job #0's folder
    notes_in(sweep / "1")
    refused(root, lambda: prepare_restart(sweep / "1", sweep, sweep_id, 0), "of its job #0")
    refused(root, lambda: prepare_restart(sweep / "1", sweep, "another", 1), "of its job #1")
    (sweep / "2").symlink_to(sweep / "1")  # the sweep's own folder, through a link
    refused(root, lambda: prepare_restart(sweep / "2", sweep, sweep_id, 1), "not a folder of")
    outside = notes_in(root / "outside")
    refused(root, lambda: prepare_restart(outside, sweep, sweep_id, 0), "not a folder of its own")
    # its own folder: emptied but for the marker
    prepare_restart(sweep / "1", sweep, sweep_id, 1)
    assert [p.name for p in (sweep / "1").iterdir()] == [".sweep_job"]


def probe_claim_job_dir(root: Path) -> None:
    from hydra_plugins.llm_scratch_launcher.continuation import claim_job_dir

    sweep, sweep_id = a_sweep(root)
    notes_in(sweep / "0")
    refused(root, lambda: claim_job_dir(sweep / "0", sweep, sweep_id, 0), "0 appeared with files")
    (sweep / "1").mkdir()
    (sweep / "1" / ".sweep_job").write_text(json.dumps({"sweep_id": "another", "num": 1}))
    refused(root, lambda: claim_job_dir(sweep / "1", sweep, sweep_id, 1), "1 holds files this")


def probe_write_manifest(root: Path) -> None:
    from hydra_plugins.llm_scratch_launcher.continuation import write_manifest

    (root / "sweep.json").write_text('{"jobs": [], "mine": true}\n')
    refused(root, lambda: write_manifest(root, {0: []}, {0: root / "0"}), "earlier version")
    (root / "sweep.json").write_text("my own sweep.json\n")
    refused(root, lambda: write_manifest(root, {0: []}, {0: root / "0"}), "Cannot read")


def probe_sweep_lock(root: Path) -> None:
    from hydra_plugins.llm_scratch_launcher.continuation import sweep_lock

    (root / ".sweep.lock").write_text("my notes\n")

    def lock() -> None:
        with sweep_lock(root):
            pass

    refused(root, lock, ".sweep.lock that no sweep wrote")


def probe_multirun_yaml_restore(root: Path) -> None:
    from hydra_plugins.llm_scratch_launcher.continuation import MultirunYaml

    notes_in(root / "0")
    (root / "multirun.yaml").write_text("my: own\n")
    before = snapshot(root)
    kept = MultirunYaml(OmegaConf.create({"hydra": {"sweep": {"dir": str(root)}}}))
    (root / "multirun.yaml").write_text("hydra: rewrote it\n")  # what Hydra's sweeper does
    kept.restore()  # after a refusal: put back, nothing deleted
    assert snapshot(root) == before
    # a directory Hydra's sweeper made: its file and the empty directory go, nothing else
    new = root / "new"
    made = MultirunYaml(OmegaConf.create({"hydra": {"sweep": {"dir": str(new)}}}))
    notes_in(new)
    (new / "multirun.yaml").write_text("hydra: made it\n")
    made.restore()
    assert [p.name for p in new.iterdir()] == ["notes.txt"]


def probe_run_one(root: Path) -> None:
    from hydra_plugins.llm_scratch_launcher.continuation import JobState
    from hydra_plugins.llm_scratch_launcher.subprocess_launcher import _Stop

    sweep, sweep_id = a_sweep(root)
    notes_in(sweep / "0")
    (sweep / "0" / "job_output.log").write_text("my log\n")
    launcher = SubprocessLauncher()
    launcher.config = OmegaConf.create({"hydra": {"overrides": {"hydra": []}}})
    launcher._sweep_id, launcher._stop = sweep_id, _Stop()
    job = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(sweep), "subdir": "0"}}, "task_name": "t"}
    )
    for state in (JobState.RUN, JobState.RESTART, JobState.CONTINUE):
        run = lambda s=state: launcher._run_one(0, [], job, sweep, s, None, quiet=True)  # noqa: E731
        refused(root, run, "0 (appeared with|holds) files")


def probe_sweep_resume(root: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from llm_scratch.train.sweep_resume import continued_sweep_job, drop_rows_after_checkpoint

    run = notes_in(root / "run")  # a run's directory, not a sweep's job folder
    (run / "checkpoints").mkdir()
    torch.save({"global_step": 1}, run / "checkpoints" / "last.ckpt")
    (run / "metrics.csv").write_text("step,train/loss\n1,3.0\n2,2.0\n")
    (run / "samples.jsonl").write_text('{"step": 2, "text": "x"}\n')
    logger = CSVLogger(save_dir=str(run), name="", version="")
    os.environ[CONTINUE_ENV] = str(run)
    try:
        refused(root, lambda: continued_sweep_job(run), "not a sweep's job folder")
        refused(root, lambda: drop_rows_after_checkpoint([logger], run), "holds no .sweep_job")
    finally:
        del os.environ[CONTINUE_ENV]


# each place that deletes or writes over a file, and the probe that gives it foreign content
DELETION_PROBES = {
    "continuation.prepare_restart": probe_prepare_restart,
    "continuation.claim_job_dir": probe_claim_job_dir,
    "continuation.write_manifest": probe_write_manifest,
    "continuation.sweep_lock": probe_sweep_lock,
    "continuation.MultirunYaml.restore": probe_multirun_yaml_restore,
    "subprocess_launcher.SubprocessLauncher._run_one": probe_run_one,
    "sweep_resume._keep_metrics_before": probe_sweep_resume,
    "sweep_resume._keep_samples_up_to": probe_sweep_resume,
}


def test_every_place_the_sweep_code_deletes_refuses_what_it_did_not_write(tmp_path):
    # a new place that deletes fails here until it has a probe
    assert deletion_sites() == set(DELETION_PROBES)
    for name, probe in DELETION_PROBES.items():
        (tmp_path / name).mkdir()
        probe(tmp_path / name)


def test_a_sweep_directory_must_hold_only_what_a_sweep_wrote(tmp_path):
    from hydra_plugins.llm_scratch_launcher.continuation import check_sweep_dir, claim_job_dir

    sweep, sweep_id = a_sweep(tmp_path)
    dirs = {n: sweep / str(n) for n in (0, 1)}
    # what a sweep writes is accepted: its job folders, logs, the report, submitit's files
    claim_job_dir(dirs[0], sweep, sweep_id, 0)
    notes_in(dirs[0])  # inside its own job folder: the job's files
    (dirs[1]).mkdir()  # an empty folder: nothing to lose
    for name in ("multirun.yaml", ".sweep.lock", "report.md", "report.json", "val_loss.png"):
        (sweep / name).write_text("")
    (sweep / "sweep.log").write_text("")
    (sweep / ".submitit" / "123").mkdir(parents=True)
    assert check_sweep_dir(sweep, dirs).sweep_id == sweep_id
    # anything else is refused, naming it
    cases = {
        "run": lambda d: (d / "summary.json").write_text("{}"),
        "claim": lambda d: (d / ".run.claim").write_text("pid 1"),
        "notes": lambda d: notes_in(d / "5"),
        "file": lambda d: (d / "notes.txt").write_text("mine"),
        "link": lambda d: (d / "5").symlink_to(dirs[0]),
        "lock dir": lambda d: ((d / ".sweep.lock").unlink(), (d / ".sweep.lock").mkdir()),
        "other": lambda d: (
            (d / "5").mkdir()
            or (d / "5" / ".sweep_job").write_text(json.dumps({"sweep_id": "another", "num": 5}))
        ),
        "renumbered": lambda d: (
            (d / "5").mkdir()
            or (d / "5" / ".sweep_job").write_text(json.dumps({"sweep_id": sweep_id, "num": 1}))
        ),
        "old": lambda d: (d / "sweep.json").write_text(json.dumps({"jobs": []})),
    }
    import shutil

    for case, make in cases.items():
        copy = tmp_path / case.replace(" ", "_")
        shutil.copytree(sweep, copy, symlinks=True)
        make(copy)
        copies = {n: copy / str(n) for n in dirs}
        before = snapshot(copy)
        with pytest.raises(UserError, match=f"hydra.sweep.dir={copy} ") as error:
            check_sweep_dir(copy, copies)
        assert snapshot(copy) == before
        assert "\n" not in str(error.value)
        if case in ("notes", "link", "file"):
            assert str(copy / ("notes.txt" if case == "file" else "5")) in str(error.value)


def test_each_job_gets_a_new_folder_directly_inside_the_sweep_directory(tmp_path):
    from hydra_plugins.llm_scratch_launcher.continuation import check_job_paths

    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (sweep / "link").symlink_to(tmp_path / "elsewhere")
    check_job_paths(sweep, {0: sweep / "0", 1: sweep / "1"})
    for subdir in ("checkpoints", "..", ".", str(tmp_path / "abs"), "a/b", "link", "sweep.json"):
        with pytest.raises(UserError, match="each job needs a new folder of its own directly"):
            check_job_paths(sweep, {0: sweep / subdir})
    with pytest.raises(UserError, match="the folder .*same .also job #0's."):
        check_job_paths(sweep, {0: sweep / "same", 1: sweep / "same"})


def finished_run(run: Path) -> Path:
    """What a finished single run leaves in its directory."""
    (run / "checkpoints").mkdir(parents=True)
    for name in ("last.ckpt", "best-step=6-val_loss=3.1.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"weights")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    for name, text in [(".run.claim", "pid 1"), ("summary.json", "{}"), ("metrics.csv", "step\n")]:
        (run / name).write_text(text)
    return run


@pytest.mark.slow
def test_a_sweep_into_the_users_files_or_a_finished_run_is_refused(tmp_path):
    # the three cases of issue 27: each one error line naming the folder, nothing submitted,
    # written or deleted (not even Hydra's multirun.yaml left behind)
    folder = tmp_path / "F"
    notes_in(folder / "0")
    run = finished_run(tmp_path / "run")
    cases = [
        ([f"hydra.sweep.dir={folder}"], f"{folder / '0'}, which no sweep wrote"),
        ([f"hydra.sweep.dir={run}", "hydra.sweep.subdir=checkpoints"], "the folder"),
        ([f"hydra.sweep.dir={run}"], f"hydra.sweep.dir={run} is a run's directory"),
    ]
    before = snapshot(tmp_path)
    for given, named in cases:
        out = run_command(entry("-m", *TINY_JOB, "seed=1,2", *given), tmp_path)
        assert out.returncode == 2, out.stderr[-3000:]
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
        (line,) = error_lines(out.stderr)
        assert named in line, line
        assert snapshot(tmp_path) == before
