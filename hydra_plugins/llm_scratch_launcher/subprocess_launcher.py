"""Run each job of a Hydra multirun in a fresh process, optionally several at once on own GPUs.

Why not Hydra's in-process launcher: Lightning's ``ddp`` strategy starts its other ranks by
re-running the script with the original command line. Inside ``-m`` that command is the whole
sweep, so every rank runs every job and a second sweep directory appears; the process group and
``LOCAL_RANK`` also outlive a job. Here each job is an ordinary single run
(``python run_experiment.py <job overrides> hydra.run.dir=<sweep dir>/<n>``), so Lightning's DDP
re-launch repeats exactly that one job, and nothing leaks from one job into the next.

Parallel jobs: with ``parallel_jobs`` > 1 that many jobs run at once. With ``devices_per_job``
set, each running job holds its own GPUs (``CUDA_VISIBLE_DEVICES``) until it ends; a process
that starts later gets the GPUs a finished one gave back.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

SWEEP_ID_ENV = "LLM_SCRATCH_SWEEP_ID"
# Hydra overrides of the sweep itself; a job runs as a single run and takes none of them.
_SWEEP_ONLY = ("hydra.sweep", "hydra.sweeper", "hydra.launcher", "hydra/launcher", "hydra.mode")


def script_command() -> list[str]:
    """The command that started this process's script, as Lightning re-launches it."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is None:
        return [sys.executable, os.path.abspath(sys.argv[0])]
    return [sys.executable, "-m", spec.name]


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without initialising CUDA in the launcher."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d for d in listed.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch or no driver: no GPUs
        return []


class SubprocessLauncher(Launcher):
    def __init__(
        self,
        parallel_jobs: int | None = None,
        devices_per_job: int | None = None,
        devices: list[str] | None = None,
    ) -> None:
        self.parallel_jobs = parallel_jobs
        self.devices_per_job = devices_per_job
        self.devices = [str(d) for d in devices] if devices is not None else None
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def _device_groups(self) -> list[str | None]:
        if not self.devices_per_job:
            return [None] * max(self.parallel_jobs or 1, 1)
        gpus = self.devices if self.devices is not None else visible_gpus()
        n = len(gpus) // self.devices_per_job
        if n == 0:
            raise RuntimeError(
                f"hydra.launcher.devices_per_job={self.devices_per_job} but only {len(gpus)} "
                "GPU(s) are visible: lower devices_per_job or unset it to run on the CPU."
            )
        if self.parallel_jobs:
            n = min(n, self.parallel_jobs)
        k = self.devices_per_job
        return [",".join(gpus[i * k : (i + 1) * k]) for i in range(n)]

    def _hydra_overrides(self) -> list[str]:
        given = list(self.config.hydra.overrides.hydra)
        return [o for o in given if not o.lstrip("+~").startswith(_SWEEP_ONLY)]

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        groups = self._device_groups()
        slots: queue.Queue = queue.Queue()
        for group in groups:
            slots.put(group)
        where = f", each on GPU(s) {' / '.join(groups)}" if self.devices_per_job else ""
        log.info(
            "Launching %d jobs, %d at a time, each in its own process%s",
            len(job_overrides),
            len(groups),
            where,
        )
        jobs = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]

        def run(job: tuple[int, list[str]]) -> JobReturn:
            group = slots.get()
            try:
                return self._run_one(job[0], job[1], sweep_dir, group, quiet=len(groups) > 1)
            finally:
                slots.put(group)

        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            return list(pool.map(run, jobs))

    def _run_one(
        self, idx: int, overrides: list[str], sweep_dir: Path, gpus: str | None, quiet: bool
    ) -> JobReturn:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        job_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        command = [
            *script_command(),
            *overrides,
            *self._hydra_overrides(),
            f"hydra.run.dir={job_dir}",
            f"hydra.job.num={idx}",
            f"hydra.job.id={idx}",
        ]
        env = dict(os.environ)
        env[SWEEP_ID_ENV] = f"{sweep_config.task_name}-{sweep_dir.name}"
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        log.info("\t#%d : %s%s", idx, " ".join(filter_overrides(overrides)), _on(gpus))
        job_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        if quiet:  # parallel jobs: each job's output in its own file, not interleaved
            with (job_dir / "job_output.log").open("w") as out:
                code = subprocess.run(
                    command, env=env, stdout=out, stderr=subprocess.STDOUT
                ).returncode
        else:
            code = subprocess.run(command, env=env).returncode
        log.info("\t#%d finished in %.0fs with exit code %d", idx, time.time() - start, code)
        ret = JobReturn(
            overrides=overrides,
            cfg=OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"]),
            hydra_cfg=sweep_config,
            working_dir=str(job_dir),
            task_name=str(sweep_config.hydra.job.name),
        )
        if code == 0:
            ret.status = JobStatus.COMPLETED
            ret.return_value = _val_loss(job_dir)
        else:
            ret.status = JobStatus.FAILED
            ret.return_value = RuntimeError(
                f"Sweep job #{idx} ({' '.join(overrides)}) failed with exit code {code}; "
                f"its output is in {job_dir}"
            )
        return ret


def _on(gpus: str | None) -> str:
    return f" (GPU {gpus})" if gpus is not None else ""


def _val_loss(job_dir: Path) -> float | None:
    # imported here: Hydra imports every plugin at start-up, and this pulls in Lightning
    from llm_scratch.train.summary import read_summary

    return read_summary(job_dir).get("metrics", {}).get("val/loss")
