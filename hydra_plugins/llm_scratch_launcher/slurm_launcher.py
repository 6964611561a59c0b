"""``hydra/launcher=slurm``: each sweep job submitted to SLURM through hydra-submitit-launcher, one
SLURM task per device; Lightning's SLURM environment wires the tasks of a job into DDP.

On top of submitit's launcher:

- Before anything is written or submitted: SLURM must answer (``sinfo``), the partition must
  exist and the job fit its nodes (tasks, CPUs, memory, GPUs), and the sweep directory must be
  new or hold this very sweep (continuation.py's rule: nothing it did not write is touched).
- Resources follow the job (``auto``): GPUs only where ``trainer.accelerator`` asks for them,
  one task per device, a CPU per task plus the data loader's workers, memory from the model's
  size.
- Continuation, as the subprocess launcher's: the same command with the sweep's directory keeps
  the finished jobs, continues the stopped ones from their ``checkpoints/last.ckpt`` in their
  own folders and runs the rest. Which one a job is, is decided on the node when it starts, so
  a job SLURM requeued continues too.
- Preemption: the signal submitit asks SLURM for (USR2, ``signal_delay_s`` before the time limit;
  ``scancel --signal=USR2 <job>`` sends it by hand) makes the job save ``last.ckpt`` at the end
  of its batch, as SIGTERM does, and requeue itself (``scontrol requeue``, at most
  ``max_num_timeout`` times); the requeued job continues from that checkpoint.
- Quiet where ``sacct`` does not answer (no accounting): job states come from ``scontrol``, and
  one line says so, instead of submitit's warning at every poll.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.llm_scratch_launcher.continuation import (
    JobState,
    MultirunYaml,
    check_same_sweep,
    claim_job_dir,
    continue_command,
    job_config,
    job_state,
    prepare_restart,
    read_marker,
    sweep_lock,
    write_manifest,
)
from llm_scratch.errors import UserError
from llm_scratch.sweep_env import CONTINUE_ENV

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as _SubmititSlurmLauncher,
    )
except ImportError:  # the slurm extra is not installed
    _SubmititSlurmLauncher = None

log = logging.getLogger(__name__)

AUTO = "auto"
# submitit SlurmExecutor parameters passed on as the config gives them (None: left out)
_PASSED = (
    "timeout_min",
    "name",
    "stderr_to_stdout",
    "qos",
    "constraint",
    "exclude",
    "gres",
    "cpus_per_gpu",
    "gpus_per_task",
    "mem_per_gpu",
    "mem_per_cpu",
    "account",
    "signal_delay_s",
    "additional_parameters",
    "array_parallelism",
    "setup",
)
# written into each job's SLURM comment: a continuation finds the sweep's jobs still queued
_COMMENT = "llm_scratch-sweep:"
_STOPPED = "stopped by SIGTERM"  # a job's result after it saved last.ckpt and stopped
_NO_SLURM = (
    "; run the sweep on a SLURM cluster's login node, start a local one-node cluster with "
    "`bash scripts/slurm_local.sh start`, or leave out hydra/launcher=slurm to run the jobs here."
)


# ------------------------------------------------------------------------------ the cluster
class Partition:
    """What ``sinfo`` says of a partition: its nodes, and the largest node's CPUs, memory (MB)
    and GPUs. (No dataclasses here: Hydra loads plugin modules outside ``sys.modules``.)"""

    def __init__(
        self, name: str, default: bool, up: bool, nodes=0, cpus=0, mem_mb=0, gpus=0
    ) -> None:
        self.name, self.default, self.up = name, default, up
        self.nodes, self.cpus, self.mem_mb, self.gpus = nodes, cpus, mem_mb, gpus


def _leading_int(text: str) -> int:
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def _gpus(gres: str) -> int:
    """GPUs in a node's generic resources as ``sinfo -o %G`` shows them (``gpu:a100:4(S:0-1)``)."""
    count = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) > 1:
            count += _leading_int(parts[-1])
    return count


def read_partitions() -> dict[str, Partition]:
    """The cluster's partitions, from ``sinfo``; one ``error:`` line where no SLURM answers."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        raise UserError(
            "hydra/launcher=slurm, but SLURM is not installed here (no sinfo)" + _NO_SLURM
        )
    try:
        out = subprocess.run(
            [sinfo, "-h", "-o", "%P|%a|%D|%c|%m|%G"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise UserError(f"hydra/launcher=slurm, but sinfo failed ({error})" + _NO_SLURM) from error
    if out.returncode != 0:
        said = (out.stderr.strip().splitlines() or ["no answer"])[-1]
        raise UserError(f"hydra/launcher=slurm, but no SLURM cluster answers ({said})" + _NO_SLURM)
    partitions: dict[str, Partition] = {}
    for line in out.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, avail, nodes, cpus, mem, gres = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        p = partitions.setdefault(name, Partition(name, default, avail == "up"))
        p.nodes += _leading_int(nodes)
        p.cpus = max(p.cpus, _leading_int(cpus))
        p.mem_mb = max(p.mem_mb, _leading_int(mem))
        p.gpus = max(p.gpus, _gpus(gres))
    if not partitions:
        raise UserError(
            "hydra/launcher=slurm, but the SLURM cluster lists no partition" + _NO_SLURM
        )
    return partitions


# ------------------------------------------------------------------------------ resources
class Resources(NamedTuple):
    """What each SLURM job of the sweep asks for, per node."""

    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    mem_gb: int
    gpus_per_node: int


def _devices(trainer: DictConfig) -> int:
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        return devices
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    return 1  # "auto" (or -1): one task; give trainer.devices to ask for more


def _parameters(model: DictConfig) -> int:
    """About how many parameters the job's GPT has (its layers and its embeddings)."""
    layers = int(model.get("n_layer") or 12)
    width = int(model.get("n_embd") or 768)
    vocab = int(model.get("vocab_size") or 50304)
    heads = 1 if model.get("tie_weights", True) else 2
    return 12 * layers * width * width + heads * vocab * width


def job_resources(params: dict[str, Any], job: DictConfig, partition: Partition) -> Resources:
    """The launcher's settings, with each ``auto`` one worked out from the job's config:
    ``tasks_per_node``: ``trainer.devices``; ``gpus_per_node``: as many when
    ``trainer.accelerator`` asks for GPUs (gpu, cuda, or auto on a partition that has them),
    none for cpu; ``cpus_per_task``: 1 + ``data.num_workers``; ``mem_gb`` (per node): 2 GB plus
    32 bytes per parameter (weights, gradients, AdamW's two moments, twice over) per task."""
    trainer, data = job.trainer, job.get("data") or OmegaConf.create({})
    devices = _devices(trainer)
    accelerator = str(trainer.get("accelerator", "auto"))
    wants_gpus = accelerator in ("gpu", "cuda") or (accelerator == "auto" and partition.gpus > 0)

    def pick(key: str, auto: int) -> int:
        value = params.get(key)
        return auto if value in (AUTO, None) else int(value)

    tasks = pick("tasks_per_node", devices)
    memory = 2 + math.ceil(32 * _parameters(job.get("model") or OmegaConf.create({})) / 1e9)
    return Resources(
        nodes=pick("nodes", int(trainer.get("num_nodes", 1) or 1)),
        tasks_per_node=tasks,
        cpus_per_task=pick("cpus_per_task", 1 + int(data.get("num_workers") or 0)),
        mem_gb=pick("mem_gb", tasks * memory),
        gpus_per_node=pick("gpus_per_node", devices if wants_gpus else 0),
    )


def check_fits(resources: Resources, partitions: dict[str, Partition], asked: str | None) -> str:
    """Refuse, with one line, a partition that does not exist or is down, and a job larger than
    its nodes; return the partition's name."""
    if asked is not None:
        if asked not in partitions:
            raise UserError(
                f"hydra.launcher.partition={asked}: the SLURM cluster has no such partition (it "
                f"has {', '.join(sorted(partitions))}); choose one of those."
            )
        partition = partitions[asked]
    else:
        defaults = [p for p in partitions.values() if p.default]
        if not defaults:
            raise UserError(
                "The SLURM cluster has no default partition: choose one with "
                f"hydra.launcher.partition=<{'|'.join(sorted(partitions))}>."
            )
        partition = defaults[0]
    name = partition.name
    if not partition.up:
        raise UserError(f"SLURM partition {name} is not up (sinfo); choose another one.")
    r = resources
    problems = []
    if r.nodes > partition.nodes:
        problems.append(
            f"{r.nodes} nodes (trainer.num_nodes), partition {name} has {partition.nodes}"
        )
    if r.tasks_per_node * r.cpus_per_task > partition.cpus:
        problems.append(
            f"{r.tasks_per_node} task(s) x {r.cpus_per_task} CPU(s) per node (trainer.devices, "
            f"hydra.launcher.cpus_per_task), its nodes have {partition.cpus} CPUs"
        )
    if r.mem_gb * 1024 > partition.mem_mb:
        problems.append(
            f"{r.mem_gb} GB per node (hydra.launcher.mem_gb), its nodes have "
            f"{partition.mem_mb / 1024:.1f} GB"
        )
    if r.gpus_per_node > partition.gpus:
        problems.append(
            f"{r.gpus_per_node} GPU(s) per node (trainer.devices with trainer.accelerator), its "
            f"nodes have {partition.gpus}"
            + ("; on a CPU-only cluster give trainer.accelerator=cpu" if not partition.gpus else "")
        )
    if problems:
        raise UserError(
            f"Each sweep job asks SLURM for more than partition {name} has: "
            + "; ".join(problems)
            + ". Ask for less, or choose a larger partition with hydra.launcher.partition=..."
        )
    return name


def check_not_queued(sweep_id: str | None) -> None:
    """Refuse to continue a sweep whose jobs are still queued or running (submitted by an earlier
    command that stopped waiting for them): they would run twice."""
    if sweep_id is None:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True, timeout=30
        )
        ours = [
            line.split("|")[0]
            for line in out.stdout.splitlines()
            if f"{_COMMENT}{sweep_id}" in line.split("|", 1)[-1]
        ]
        if ours:
            raise UserError(
                f"The sweep's SLURM job(s) {', '.join(ours)} are still queued or running; wait "
                f"for them to end (squeue) or cancel them (scancel {' '.join(ours)}), then "
                "continue the sweep with the same command."
            )


# ------------------------------------------------------------------------------ job states
def _scontrol_states(job_ids: set[str]) -> dict[str, dict[str, str]]:
    """``{job id: {"JobID", "State"}}`` from ``scontrol show job`` (array tasks as
    ``<array id>_<task>``); a job SLURM no longer knows is ``NOT_FOUND``, which ends the wait."""
    states: dict[str, dict[str, str]] = {}
    for main in sorted({j.split("_")[0] for j in job_ids}):
        try:
            out = subprocess.run(
                ["scontrol", "-o", "show", "job", main], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.stdout.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            key = fields.get("JobId", "")
            if fields.get("ArrayTaskId") and fields.get("ArrayJobId"):
                key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
            states[key] = {"JobID": key, "State": fields.get("JobState", "UNKNOWN")}
        if out.returncode != 0 and "Invalid job id" in out.stderr:
            for job_id in job_ids:
                if job_id.split("_")[0] == main:
                    states.setdefault(job_id, {"JobID": job_id, "State": "NOT_FOUND"})
    return states


def _quiet_executor(folder: str) -> Any:
    """submitit's SLURM executor whose jobs are followed with ``sacct``, or with ``scontrol``
    where ``sacct`` does not answer (said once, not at every poll)."""
    import submitit
    from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

    class Watcher(SlurmInfoWatcher):
        told = False

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            pending = {j for j in self._registered - self._finished}
            info: dict[str, dict[str, str]] = {}
            try:
                done = subprocess.run(command, capture_output=True, timeout=60)
                if done.returncode == 0:
                    info = self.read_info(done.stdout)
            except (OSError, subprocess.SubprocessError):
                pass
            missing = {j for j in pending if j not in info}
            if missing:
                if not info and not Watcher.told:
                    Watcher.told = True
                    log.info(
                        "sacct does not answer (no accounting): following the jobs with scontrol"
                    )
                info.update(_scontrol_states(missing))
            self._info_dict.update(info)
            self._last_status_check = time.time()
            for job_id in pending:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    class Job(SlurmJob):
        watcher = Watcher(delay_s=60)

    class Executor(submitit.SlurmExecutor):
        job_class = Job

        def map_array(self, fn: Any, *iterable: Any) -> list[Any]:
            # submitit makes an array's jobs SlurmJob, whatever job_class says: followed as Job
            jobs = super().map_array(fn, *iterable)
            return [Job(folder=self.folder, job_id=j.job_id, tasks=j._tasks) for j in jobs]

    return Executor(folder=folder)


# ------------------------------------------------------------------------------ on the node
_preempted: list[int] = []  # the preemption signal, once received (in the job's process)


def _rank() -> int:
    return int(os.environ.get("SLURM_PROCID", "0") or 0)


def _on_preemption(signum: int, frame: Any) -> None:
    """USR2: preemption or the time limit near. Stop as SIGTERM stops a run (last.ckpt saved at
    the end of the batch); the job requeues itself once it has stopped."""
    if not _preempted:
        _preempted.append(signum)
        log.warning(
            "%s received (preemption or time limit): saving last.ckpt, then requeueing the job",
            signal.Signals(signum).name,
        )
    handler = signal.getsignal(signal.SIGTERM)  # Lightning's while training
    if callable(handler):
        handler(signal.SIGTERM, frame)


def _requeue(limit: int) -> bool:
    """Requeue this SLURM job (the main task does), unless it was requeued ``limit`` times."""
    import submitit

    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if restarts >= limit:
        log.warning("Not requeued: requeued %d time(s) already (max_num_timeout)", restarts)
        return False
    if _rank() == 0:
        job_id = submitit.JobEnvironment().job_id
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
        log.info("Requeued SLURM job %s: it continues from its last.ckpt", job_id)
    return True


def _last_error_line(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        lines = path.read_text(errors="replace").splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        if errors:
            return errors[-1][len("error: ") :]
    return None


if _SubmititSlurmLauncher is None:
    from hydra.plugins.launcher import Launcher

    class SlurmLauncher(Launcher):  # type: ignore[no-redef]
        """Where hydra-submitit-launcher is not installed: one line saying how to install it."""

        def __init__(self, **params: Any) -> None:
            pass

        def setup(self, *, hydra_context, task_function, config) -> None:
            raise UserError(
                "hydra/launcher=slurm needs hydra-submitit-launcher: install the slurm extra "
                "(EXTRAS=slurm bash scripts/install.sh, or pip install 'llm_scratch[slurm]')."
            )

        def launch(self, job_overrides, initial_job_idx):  # never reached: setup refuses
            raise NotImplementedError

else:
    from llm_scratch.compat import QuietJobReturn

    class SlurmLauncher(_SubmititSlurmLauncher):
        def setup(self, *, hydra_context, task_function, config) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            # put back if the directory is refused
            self._multirun_yaml = MultirunYaml(config)

        # --------------------------------------------------------------- on the login node
        def launch(
            self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
        ) -> Sequence[JobReturn]:
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            jobs = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
            max_batch = self.config.hydra.sweeper.get("max_batch_size")
            whole = initial_job_idx == 0 and max_batch is None
            with contextlib.ExitStack() as locked:
                try:
                    configs = {idx: self._job_config(idx, o) for idx, o in jobs}
                    job_dirs = {
                        idx: sweep_dir / str(c.hydra.sweep.subdir) for idx, c in configs.items()
                    }
                    continuing = check_same_sweep(sweep_dir, dict(jobs), job_dirs, whole=whole)
                    partitions = read_partitions()
                    resources, partition = self._resources(configs, partitions)
                    manifest_id = None
                    if continuing:
                        from hydra_plugins.llm_scratch_launcher.continuation import read_manifest

                        manifest_id = read_manifest(sweep_dir).sweep_id
                    check_not_queued(manifest_id)
                    sweep_dir.mkdir(parents=True, exist_ok=True)
                    locked.enter_context(sweep_lock(sweep_dir))
                except UserError:  # refused: nothing submitted, the directory as it was
                    self._multirun_yaml.restore()
                    raise
                return self._submit(
                    jobs, configs, job_dirs, sweep_dir, continuing, resources, partition
                )

        def _job_config(self, idx: int, overrides: list[str]) -> DictConfig:
            return job_config(self.hydra_context, self.config, idx, overrides)

        def _resources(
            self, configs: dict[int, DictConfig], partitions: dict[str, Partition]
        ) -> tuple[Resources, str]:
            """One SLURM array for the sweep: each job asks for the most any job needs."""
            asked = self.params.get("partition")
            name = check_fits(Resources(1, 1, 1, 0, 0), partitions, asked)  # the partition exists
            each = [job_resources(self.params, c, partitions[name]) for c in configs.values()]
            largest = Resources(*(max(getattr(r, f) for r in each) for f in Resources._fields))
            return largest, check_fits(largest, partitions, asked)

        def _submit(
            self,
            jobs: list[tuple[int, list[str]]],
            configs: dict[int, DictConfig],
            job_dirs: dict[int, Path],
            sweep_dir: Path,
            continuing: bool,
            resources: Resources,
            partition: str,
        ) -> Sequence[JobReturn]:
            self._sweep_id = write_manifest(sweep_dir, dict(jobs), job_dirs)
            self._sweep_dir = str(sweep_dir)
            self._sweep_dir_path = sweep_dir
            self._job_dirs = {idx: str(d) for idx, d in job_dirs.items()}
            states = {idx: job_state(job_dirs[idx]) for idx, _ in jobs}
            log.info("Sweep directory: %s", sweep_dir.resolve())
            if continuing:
                count = {s: sum(1 for v in states.values() if v == s) for s in JobState}
                log.info(
                    "Continuing the sweep: %d job(s) finished (kept as they are), %d to continue "
                    "from their checkpoints/last.ckpt, %d to run",
                    count[JobState.FINISHED],
                    count[JobState.CONTINUE],
                    count[JobState.RUN] + count[JobState.RESTART],
                )
            results: dict[int, JobReturn] = {}
            to_run = []
            for idx, overrides in jobs:
                shown = " ".join(filter_overrides(overrides))
                if states[idx] == JobState.FINISHED:
                    log.info("\t#%d : %s (finished earlier: kept)", idx, shown)
                    results[idx] = self._finished(idx, overrides, configs[idx], job_dirs[idx])
                    continue
                if states[idx] == JobState.RESTART:
                    prepare_restart(job_dirs[idx], sweep_dir, self._sweep_id, idx)
                # its marker, before the job is submitted: the folder is this sweep's own
                claim_job_dir(job_dirs[idx], sweep_dir, self._sweep_id, idx)
                how = {
                    JobState.CONTINUE: " (continuing from its checkpoints/last.ckpt)",
                    JobState.RESTART: " (started earlier but saved no checkpoint: afresh)",
                }.get(states[idx], "")
                log.info("\t#%d : %s%s", idx, shown, how)
                to_run.append((idx, overrides))
            if to_run:
                self._run(to_run, configs, job_dirs, resources, partition, results)
            failed = [r for r in results.values() if r.status == JobStatus.FAILED]
            for r in failed:  # the sweeper raises the first one: say how to go on
                r._return_value.args = (
                    f"{r._return_value} ({len(failed)} of {len(jobs)} job(s) failed). Continue "
                    "the sweep (finished jobs are kept, stopped ones continue from their "
                    f"last.ckpt, the others run) with: {continue_command(sweep_dir)}",
                )
            log.info(
                "Sweep directory: %s; its report: python training/report.py %s",
                sweep_dir.resolve(),
                sweep_dir.resolve(),
            )
            return [results[idx] for idx, _ in jobs]

        def _run(
            self,
            to_run: list[tuple[int, list[str]]],
            configs: dict[int, DictConfig],
            job_dirs: dict[int, Path],
            resources: Resources,
            partition: str,
            results: dict[int, JobReturn],
        ) -> None:
            from hydra.core.singleton import Singleton

            executor = _quiet_executor(str(self.params["submitit_folder"]))
            named = {"timeout_min": "time", "name": "job_name"}  # as sbatch names them
            passed = {
                named.get(k, k): self.params[k] for k in _PASSED if self.params.get(k) is not None
            }
            comment = " ".join(
                filter(None, [self.params.get("comment"), f"{_COMMENT}{self._sweep_id}"])
            )
            executor.update_parameters(
                **passed,
                partition=partition,
                comment=comment,
                nodes=resources.nodes,
                ntasks_per_node=resources.tasks_per_node,
                cpus_per_task=resources.cpus_per_task,
                mem=f"{resources.mem_gb}GB",
                **({"gpus_per_node": resources.gpus_per_node} if resources.gpus_per_node else {}),
            )
            args = [
                (o, "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
                for idx, o in to_run
            ]
            submitted = executor.map_array(self, *zip(*args, strict=True))
            log.info(
                "Submitted %d SLURM job(s) (%s) to partition %s, each %d task(s) x %d CPU(s), "
                "%d GB%s; waiting for them",
                len(submitted),
                ", ".join(j.job_id for j in submitted),
                partition,
                resources.tasks_per_node,
                resources.cpus_per_task,
                resources.mem_gb,
                f", {resources.gpus_per_node} GPU(s)" if resources.gpus_per_node else "",
            )
            try:
                for (idx, overrides), job in zip(to_run, submitted, strict=True):
                    results[idx] = self._collect(idx, overrides, configs[idx], job_dirs[idx], job)
            except KeyboardInterrupt:  # Ctrl-C stops the waiting, not the jobs
                ids = " ".join(j.job_id for j in submitted)
                stopped = UserError(
                    f"Stopped waiting; the sweep's SLURM jobs go on ({ids}: squeue shows them, "
                    f"scancel {ids} stops them). Once they have ended, the same command keeps the "
                    f"finished jobs and continues the others: {continue_command(self._sweep_dir_path)}"
                )
                stopped.exit_code = 130
                raise stopped from None

        def _job_return(self, overrides, config, job_dir: Path) -> QuietJobReturn:
            return QuietJobReturn(
                overrides=overrides,
                cfg=OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]),
                hydra_cfg=config,
                working_dir=str(job_dir),
                task_name=str(config.hydra.job.name),
            )

        def _finished(self, idx, overrides, config, job_dir: Path) -> JobReturn:
            from hydra_plugins.llm_scratch_launcher.subprocess_launcher import _val_loss

            ret = self._job_return(overrides, config, job_dir)
            ret.status = JobStatus.COMPLETED
            ret.return_value = _val_loss(job_dir)
            return ret

        def _collect(self, idx, overrides, config, job_dir: Path, job: Any) -> JobReturn:
            """The job's result once it has ended; a failure as one line naming its log."""
            from hydra_plugins.llm_scratch_launcher.subprocess_launcher import JobFailed

            try:
                ret = job.results()[0]
            except Exception:  # ended without a result: killed before it could write one
                ret = None
            if ret is not None and ret.status == JobStatus.COMPLETED:
                log.info("\t#%d finished (SLURM job %s)", idx, job.job_id)
                return self._finished(idx, overrides, config, job_dir)
            stopped = ret is not None and str(ret._return_value) == _STOPPED
            if stopped:
                what = "was stopped by SIGTERM after saving its checkpoints/last.ckpt"
            else:
                said = _last_error_line(job.paths.stderr) or "it ended without a result"
                what = f"failed: {said}"
            failed = self._job_return(overrides, config, job_dir)
            failed.status = JobStatus.FAILED
            failed.return_value = JobFailed(
                f"Sweep job #{idx} ({' '.join(overrides)}) {what} (SLURM job {job.job_id}, "
                f"{job.state}; its output: {job.paths.stderr})",
                1,
            )
            return failed

        # --------------------------------------------------------------- on the node
        def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state):
            job_dir = Path(self._job_dirs[job_num])
            state = job_state(job_dir)
            os.environ.pop(CONTINUE_ENV, None)
            if state == JobState.FINISHED:  # requeued after it had finished: nothing to do
                done = JobReturn()
                done.status = JobStatus.COMPLETED
                done.return_value = None
                return done
            if state == JobState.CONTINUE and read_marker(job_dir) == (self._sweep_id, job_num):
                # stopped (or requeued) after saving: continue in its own folder
                os.environ[CONTINUE_ENV] = str(job_dir.resolve())
            elif state == JobState.RESTART and _rank() == 0:  # a requeued job that saved nothing
                prepare_restart(job_dir, Path(self._sweep_dir), self._sweep_id, job_num)
            signal.signal(signal.SIGUSR2, _on_preemption)
            try:
                return super().__call__(
                    sweep_overrides, job_dir_key, job_num, job_id, singleton_state
                )
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
                if code == 0:
                    raise
                if _preempted and _requeue(int(self.params.get("max_num_timeout") or 0)):
                    raise  # no result: the requeued job writes it
                # the job's error line is in its log; the sweep names it
                ret = JobReturn()
                ret.status = JobStatus.FAILED
                ret.return_value = UserError(_STOPPED if code == 143 else f"exit code {code}")
                return ret
