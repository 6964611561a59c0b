"""Sweeps: the per-job-process launcher, DDP inside a multirun, parallel jobs, bf16, the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.llm_scratch_launcher.subprocess_launcher import SubprocessLauncher
from llm_scratch.errors import UserError
from llm_scratch.report import collect_jobs
from llm_scratch.train.run import train
from tests.helpers import FAST, REPO, compose_config
from tests.test_train import column, read_metrics

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


def test_ablation_experiments_define_their_sweeps(tmp_path):
    expected = {
        "norm": {"model.pre_norm", "scheduler.warmup_fraction", "scheduler.warmup_steps"},
        "init": {"model.layer_init"},
        "attention": {"model.attention"},
        "tying": {"model.tie_weights"},
        "grid": {"model.pre_norm", "model.layer_init", "model.attention"},
    }
    for name, keys in expected.items():
        for scale, n_layer in (("", 12), ("_cpu", 6)):
            cfg = compose_config([f"experiment=ablation_{name}{scale}"], tmp_path)
            assert set(OmegaConf.to_container(cfg.hydra.sweeper.params)) == keys
            assert cfg.model.n_layer == n_layer and cfg.data.corpus == "verdict"
            assert cfg.task_name == f"ablation_{name}{scale}"


def test_slurm_launcher_config_composes(tmp_path):
    cfg = compose_config(
        ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
        tmp_path,
    )
    assert "submitit" in cfg.hydra.launcher._target_
    assert cfg.hydra.launcher.tasks_per_node == 4 and cfg.hydra.launcher.nodes == 2
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
