"""``hydra/launcher=slurm`` on a real SLURM cluster (``bash scripts/slurm_local.sh start`` makes a
one-node one): a 2 x 2 sweep submitted and reported, DDP across two SLURM tasks, a preempted job
requeued, a stopped sweep continued in its directory. The refusals before anything is submitted
and the resources a job asks for need no cluster (a stand-in ``sinfo`` answers for one)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
from omegaconf import OmegaConf

from hydra_plugins.llm_scratch_launcher.slurm_launcher import (
    Partition,
    check_fits,
    job_resources,
)
from llm_scratch.errors import UserError
from tests.helpers import REPO, compose_config
from tests.test_sweep import (
    cli_env,
    entry,
    error_lines,
    metrics_rows,
    printed_command,
    snapshot,
)


def cluster_answers() -> bool:
    """Whether a SLURM cluster answers here with a node ready for jobs."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and any(
        s.strip().rstrip("*") in ("idle", "mix", "alloc") for s in out.stdout.split()
    )


needs_cluster = pytest.mark.skipif(
    not cluster_answers(), reason="no SLURM cluster answers (bash scripts/slurm_local.sh start)"
)

# gpt-nano, char-level Verdict: 6 steps of 8 windows, a validation every 3
TINY = [
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
]


def sweep_command(*args: str) -> list[str]:
    return entry("-m", "hydra/launcher=slurm", *args)


def run(command: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        cwd=cwd,
        env={**cli_env(cwd), **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=cli_env(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def loss_rows(job: Path) -> list[dict[str, str]]:
    """metrics.csv's rows without timing, nor train/tokens_seen: a checkpoint saved on SIGTERM
    holds the count before its batch (llm_scratch/train/callbacks.py's SigtermCheckpoint saves
    before ThroughputMonitor counts the batch), so a continued run's count is one batch short."""
    return [{k: v for k, v in r.items() if k != "train/tokens_seen"} for r in metrics_rows(job)]


def summary(job: Path) -> dict:
    return json.loads((job / "summary.json").read_text())


def assert_quiet_polling(out: str) -> None:
    """Where sacct does not answer, one line says so, not a warning at every poll."""
    assert "Bypassing sacct error" not in out, out[-3000:]
    assert out.count("sacct does not answer") <= 1, out[-3000:]


class WaitForSignal(L.Callback):
    """In a SLURM job's first start (not after a requeue), at step ``step`` of the job in folder
    ``job``: write the SLURM job id to ``ready`` (the test then signals the job) and wait until
    the signal has arrived (Lightning's SIGTERM flag), at most 120 s."""

    def __init__(self, job: int, step: int, ready: str) -> None:
        self.job, self.step, self.ready = str(job), step, Path(ready)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        run_dir = Path(trainer.default_root_dir)
        if run_dir.name != self.job or trainer.global_step != self.step or self.ready.exists():
            return
        import submitit

        self.ready.write_text(submitit.JobEnvironment().job_id)
        deadline = time.monotonic() + 120
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 600) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(process.communicate()[1][-3000:])
        assert time.monotonic() < deadline, "the job did not reach its step"
        time.sleep(0.2)
    time.sleep(0.2)  # written in full
    return path.read_text().strip()


def wait_on(args: list[str], job: int, step: int, ready: Path) -> list[str]:
    return [
        *args,
        "+callbacks.wait._target_=tests.test_slurm.WaitForSignal",
        f"+callbacks.wait.job={job}",
        f"+callbacks.wait.step={step}",
        f"+callbacks.wait.ready={ready}",
    ]


# ------------------------------------------------------------------------ on a SLURM cluster
@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
def test_a_two_by_two_sweep_runs_on_slurm_and_is_reported(tmp_path):
    sweep = tmp_path / "sweep"
    out = run(
        sweep_command(
            *TINY,
            "trainer.max_steps=3",
            "model.pre_norm=true,false",
            "seed=1,2",
            f"hydra.sweep.dir={sweep}",
        ),
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert_quiet_polling(out.stdout + out.stderr)
    assert "Submitted 4 SLURM job(s)" in out.stdout
    # CPU only: one task, one CPU, no GPU; memory from the model's size
    assert "each 1 task(s) x 1 CPU(s), 3 GB; waiting" in out.stdout, out.stdout
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1", "2", "3"]
    settings = set()
    for job in jobs:
        assert summary(sweep / job)["global_step"] == 3
        config = OmegaConf.load(sweep / job / "config.yaml")
        settings.add((config.model.pre_norm, config.seed))
    assert settings == {(True, 1), (True, 2), (False, 1), (False, 2)}

    report = subprocess.run(
        [sys.executable, str(REPO / "training" / "report.py"), str(sweep)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert "4 jobs" in report.stdout
    text = (sweep / "report.md").read_text()
    assert "pre_norm=True" in text and "pre_norm=False" in text


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
def test_ddp_across_two_slurm_tasks_equals_one_process(tmp_path):
    from tests.test_fsdp import RUN, SINGLE, TOLERANCE, global_losses

    # the reference: one process on the same global batch of 16 (test_fsdp's), alongside
    ref = tmp_path / "reference"
    reference = start(entry(*RUN, *SINGLE, f"hydra.run.dir={ref}"), tmp_path)
    sweep = tmp_path / "sweep"
    out = run(
        sweep_command(
            *RUN,
            "trainer=ddp",
            "trainer.devices=2",
            "data.batch_size=8",
            f"hydra.sweep.dir={sweep}",
        ),
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "each 2 task(s) x 1 CPU(s)" in out.stdout, out.stdout  # one task per device
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    job = sweep / "0"
    assert summary(job)["world_size"] == 2 and summary(job)["global_step"] == 8
    one, two = global_losses(ref), global_losses(job)
    assert sorted(one) == sorted(two) == list(range(1, 9))
    assert max(abs(one[s] - two[s]) for s in one) <= TOLERANCE, (one, two)
    assert one[8] < one[1] - 0.05  # it trained
    # both tasks ran in SLURM's environment: Lightning took its ranks from SLURM
    log = next((sweep / ".submitit").glob("*/*_1_log.out")).read_text()
    assert "global_rank=1(2)" in log


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
def test_a_preempted_job_saves_is_requeued_and_continues_exactly(tmp_path):
    # two jobs of the same overrides: #0 gets SLURM's preemption signal (USR2, what SLURM sends
    # signal_delay_s before the time limit) at step 3; #1 runs uninterrupted
    sweep, ready = tmp_path / "sweep", tmp_path / "ready"
    command = sweep_command(*wait_on(TINY, job=0, step=3, ready=ready), "seed=3,3")
    sweep_run = start([*command, f"hydra.sweep.dir={sweep}"], tmp_path)
    job_id = wait_for(ready, sweep_run)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=60)
    out, err = sweep_run.communicate(timeout=900)
    assert sweep_run.returncode == 0, err[-3000:]
    assert_quiet_polling(out + err)
    # requeued once by SLURM, and continued from the checkpoint saved on the signal
    shown = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60
    )
    assert "Restarts=1 " in shown.stdout, shown.stdout
    interrupted, whole = sweep / "0", sweep / "1"
    assert summary(interrupted)["global_step"] == summary(whole)["global_step"] == 6
    assert (
        "Continuing this sweep job in its own directory" in (interrupted / "train.log").read_text()
    )
    # the same record as the uninterrupted job's: no row missing or twice, the same losses
    assert loss_rows(interrupted) == loss_rows(whole)
    assert [int(r["step"]) for r in metrics_rows(interrupted) if r["train/loss"]] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert (interrupted / "samples.jsonl").read_text() == (whole / "samples.jsonl").read_text()


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
def test_a_stopped_slurm_sweep_continues_in_its_directory(tmp_path):
    # job #0 is cancelled (SIGTERM) at step 3 and saves its last.ckpt; job #1 (the same
    # overrides) finishes: the sweep ends with one line and the command that continues it
    sweep, ready = tmp_path / "sweep", tmp_path / "ready"
    command = [
        *sweep_command(*wait_on(TINY, job=0, step=3, ready=ready), "seed=4,4"),
        f"hydra.sweep.dir={sweep}",
    ]
    first = start(command, tmp_path)
    job_id = wait_for(ready, first)
    subprocess.run(["scancel", job_id], check=True, timeout=60)
    _, err = first.communicate(timeout=900)
    assert first.returncode != 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (line,) = error_lines(err)
    assert "Sweep job #0" in line and "was stopped by SIGTERM after saving" in line, line
    assert printed_command(line) == command, line  # the sweep's own command, its directory
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file()
    assert not (sweep / "0" / "summary.json").exists() and (sweep / "1" / "summary.json").exists()
    finished = {k: v for k, v in snapshot(sweep).items() if k.startswith("1/")}

    # the same command continues it: #1 kept byte for byte, #0 from its checkpoint
    again = run(printed_command(line), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        "Continuing the sweep: 1 job(s) finished (kept as they are), 1 to continue from their "
        "checkpoints/last.ckpt, 0 to run" in again.stdout
    ), again.stdout
    assert {k: v for k, v in snapshot(sweep).items() if k.startswith("1/")} == finished
    assert loss_rows(sweep / "0") == loss_rows(sweep / "1")
    assert summary(sweep / "0")["global_step"] == 6


# ------------------------------------------------------------------ refusals, no cluster needed
FAKE_SINFO = """#!/bin/sh
# a stand-in for SLURM's sinfo: one partition, one node of 2 CPUs and 4000 MB, no GPU
echo 'debug*|up|1|2|4000|(null)'
"""
NO_SLURM = """#!/bin/sh
echo 'slurm_load_partitions: Unable to contact slurm controller (connect failure)' >&2
exit 1
"""
# records a submission: nothing may be submitted when the input is refused
FAKE_SBATCH = """#!/bin/sh
touch "$(dirname "$0")/submitted"
exit 1
"""


def fake_slurm(where: Path, sinfo: str) -> dict[str, str]:
    where.mkdir()
    for name, text in (("sinfo", sinfo), ("sbatch", FAKE_SBATCH), ("srun", FAKE_SBATCH)):
        (where / name).write_text(text)
        (where / name).chmod(stat.S_IRWXU)
    return {"PATH": f"{where}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.slow
def test_bad_slurm_input_is_one_line_before_anything_is_submitted(tmp_path):
    cluster = fake_slurm(tmp_path / "bin", FAKE_SINFO)
    down = fake_slurm(tmp_path / "down", NO_SLURM)
    other = tmp_path / "other"  # a sweep directory holding another sweep
    (other / "0").mkdir(parents=True)
    (other / "0" / ".sweep_job").write_text(json.dumps({"sweep_id": "s1", "num": 0}))
    jobs = [{"num": 0, "dir": "0", "overrides": ["seed=9"]}]
    (other / "sweep.json").write_text(json.dumps({"sweep_id": "s1", "jobs": jobs}))
    cases = [
        (down, [], "no SLURM cluster answers (slurm_load_partitions: Unable to contact"),
        (cluster, ["hydra.launcher.partition=gpu"], "partition=gpu: the SLURM cluster has no such"),
        (cluster, ["trainer=ddp", "trainer.devices=4"], "4 task(s) x 1 CPU(s) per node"),
        (cluster, ["hydra.launcher.mem_gb=64"], "64 GB per node (hydra.launcher.mem_gb)"),
        (
            cluster,
            ["trainer.accelerator=gpu"],
            "on a CPU-only cluster give trainer.accelerator=cpu",
        ),
    ]
    before = snapshot(tmp_path)
    for env, given, said in cases:
        sweep = tmp_path / "sweep"
        out = run(
            sweep_command(*TINY, "seed=1,2", f"hydra.sweep.dir={sweep}", *given), tmp_path, env
        )
        assert out.returncode == 2, out.stderr[-3000:]
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
        (line,) = error_lines(out.stderr)
        assert said in line, line
        assert not sweep.exists(), line  # nothing written, not even Hydra's multirun.yaml
        assert snapshot(tmp_path) == before  # nothing submitted
    out = run(sweep_command(*TINY, "seed=1,2", f"hydra.sweep.dir={other}"), tmp_path, cluster)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (line,) = error_lines(out.stderr)
    assert f"hydra.sweep.dir={other} holds a sweep with other overrides" in line, line
    assert snapshot(tmp_path) == before


def test_a_job_asks_slurm_for_what_its_config_needs(tmp_path):
    auto = OmegaConf.to_container(
        compose_config(["hydra/launcher=slurm"], tmp_path).hydra.launcher, resolve=False
    )
    gpus = Partition("gpu", True, True, nodes=4, cpus=64, mem_mb=512_000, gpus=8)
    cpus = Partition("cpu", True, True, nodes=1, cpus=2, mem_mb=4000)

    def asked(partition: Partition, *overrides: str, **settings):
        job = compose_config(["hydra/launcher=slurm", *overrides], tmp_path)
        return job_resources({**auto, **settings}, job, partition)

    # CPU: no GPU request whatever the partition has; one task per device, 1 CPU each
    assert asked(gpus, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2") == (
        1,
        2,
        1,
        2 * 3,
        0,
    )
    # GPUs where the accelerator asks for them (auto: where the partition has them)
    assert asked(gpus, "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2").gpus_per_node == 4
    assert asked(cpus, "trainer.devices=1").gpus_per_node == 0
    assert asked(gpus, "trainer.accelerator=gpu", "trainer.devices=2").gpus_per_node == 2
    # a CPU per task and one per data loader worker; memory grows with the model
    assert asked(cpus, "data.num_workers=3").cpus_per_task == 4
    small, large = asked(cpus, "model=gpt-nano"), asked(cpus, "model=gpt2-medium")
    assert small.mem_gb == 3 and large.mem_gb > 12
    # what the config gives wins over auto
    assert asked(cpus, cpus_per_task=2, mem_gb=1, tasks_per_node=1) == (1, 1, 2, 1, 0)
    # the partition must hold the job
    assert check_fits(asked(cpus), {"cpu": cpus}, None) == "cpu"
    with pytest.raises(UserError, match="has no such partition .it has cpu."):
        check_fits(asked(cpus), {"cpu": cpus}, "gpu")
    with pytest.raises(UserError, match="2 nodes .trainer.num_nodes., partition gpu has 1"):
        check_fits(
            asked(gpus, "trainer.num_nodes=2"),
            {"gpu": Partition("gpu", True, True, 1, 8, 64000, 8)},
            None,
        )


def test_without_submitit_the_slurm_launcher_says_how_to_install_it(monkeypatch):
    import importlib.util

    import hydra_plugins.llm_scratch_launcher.slurm_launcher as installed

    # the module as it loads where hydra-submitit-launcher is missing
    monkeypatch.setitem(
        sys.modules, "hydra_plugins.hydra_submitit_launcher.submitit_launcher", None
    )
    spec = importlib.util.spec_from_file_location("slurm_without_submitit", installed.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(UserError, match="needs hydra-submitit-launcher: install the slurm extra"):
        module.SlurmLauncher(partition=None).setup(
            hydra_context=None, task_function=None, config=OmegaConf.create({})
        )
