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

Each job's output goes to ``job_output.log`` in its directory (and, one job at a time, also to
the console). A failed job ends the sweep with one ``error:`` line naming it. SIGTERM or SIGINT
(Ctrl-C) to the sweep is passed on to the running jobs as SIGTERM: they save ``last.ckpt`` and
stop, no further job starts, and the sweep exits 143 (130 for SIGINT) with one line saying how
to continue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from llm_scratch.errors import Preempted, UserError

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
            raise UserError(
                f"hydra.launcher.devices_per_job={self.devices_per_job} but only {len(gpus)} "
                "GPU(s) are visible: lower it, or leave out hydra/launcher=gpu_parallel (or set "
                "hydra.launcher.devices_per_job=null) to run the jobs on the CPU."
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
        # in full: report.py and a stopped job's ckpt_path need this directory
        log.info("Sweep directory: %s", sweep_dir.resolve())
        log.info(
            "Launching %d jobs, %d at a time, each in its own process%s",
            len(job_overrides),
            len(groups),
            where,
        )
        jobs = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        self._stop = _Stop()

        def run(job: tuple[int, list[str]]) -> JobReturn | None:
            group = slots.get()
            try:
                if self._stop.signal is not None:  # stopped: start no further job
                    return None
                return self._run_one(job[0], job[1], sweep_dir, group, quiet=len(groups) > 1)
            finally:
                slots.put(group)

        with self._stop.forwarding(), ThreadPoolExecutor(max_workers=len(groups)) as pool:
            results = list(pool.map(run, jobs))
        if self._stop.signal is not None:
            raise _stopped_error(self._stop.signal, jobs, results)
        failed = [r for r in results if r.status == JobStatus.FAILED]
        for r in failed:  # the sweeper raises the first one: say how many there were
            r._return_value.args = (
                f"{r._return_value} ({len(failed)} of {len(results)} job(s) failed; the sweep "
                f"is in {sweep_dir.resolve()})",
            )
        log.info(
            "Sweep directory: %s; its report: python training/report.py %s",
            sweep_dir.resolve(),
            sweep_dir.resolve(),
        )
        return results

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
        env["PYTHONUNBUFFERED"] = "1"  # its lines reach the console and job_output.log at once
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        log.info("\t#%d : %s%s", idx, " ".join(filter_overrides(overrides)), _on(gpus))
        job_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        # Its output always goes to job_output.log (an error line is otherwise only on the
        # console); one job at a time it is also copied to the console.
        with (job_dir / "job_output.log").open("wb") as out:
            code = self._stop.run(command, env, out, to_console=not quiet)
        log.info("\t#%d finished in %.0fs with exit code %d", idx, time.time() - start, code)
        ret = _JobReturn(
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
            ret.return_value = JobFailed(
                f"Sweep job #{idx} ({' '.join(overrides)}) failed with exit code {code}; its "
                f"output is in {(job_dir / 'job_output.log').resolve()}",
                code,
            )
        return ret


class _JobReturn(JobReturn):
    """Hydra's ``JobReturn`` without its "Error executing job with overrides" line on top of the
    one ``error:`` line a failed job ends the sweep with (the line names the overrides)."""

    @property
    def return_value(self) -> Any:
        if self.status == JobStatus.FAILED:
            raise self._return_value
        return super().return_value

    @return_value.setter
    def return_value(self, value: Any) -> None:
        self._return_value = value


class JobFailed(UserError):
    """A sweep job ended with a non-zero exit status; the sweep exits with the same status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        # a job killed by a signal reads -N: the shell's 128 + N
        self.exit_code = code if 0 < code < 256 else 128 - code if code < 0 else 1


class _Stop:
    """The running jobs' processes, and the signal that stopped the sweep (if any)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()

    @contextlib.contextmanager
    def forwarding(self) -> Iterator[None]:
        """While inside, SIGTERM and SIGINT pass SIGTERM on to the running jobs (Hydra runs
        ``launch`` in the main thread, the only one that may set signal handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signal is None:
            self.signal = signum
            log.warning(
                "%s received: stopping the running job(s) after they save their checkpoint",
                signal.Signals(signum).name,
            )
        with self._lock:
            running = list(self._running)
        for process in running:
            # SIGTERM makes a job save last.ckpt and stop; to its whole process group, so that
            # DDP ranks it started stop too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)

    def run(self, command: list[str], env: dict, out: BinaryIO, to_console: bool) -> int:
        """Run ``command`` to its end with its output in ``out`` (and on the console)."""
        with self._lock:
            if self.signal is not None:
                return 128 + self.signal
            # its own session: Ctrl-C in the terminal reaches only the sweep, which passes it on
            process = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE if to_console else out,
                stderr=subprocess.PIPE if to_console else subprocess.STDOUT,
                start_new_session=True,
            )
            self._running.add(process)
        try:
            if to_console:
                write_lock = threading.Lock()
                copies = [
                    threading.Thread(
                        target=_copy, args=(pipe, console, out, write_lock), daemon=True
                    )
                    for pipe, console in (
                        (process.stdout, sys.stdout),
                        (process.stderr, sys.stderr),
                    )
                ]
                for copy in copies:
                    copy.start()
                for copy in copies:
                    copy.join()
            return process.wait()
        finally:
            with self._lock:
                self._running.discard(process)


def _copy(pipe: BinaryIO, console: TextIO, out: BinaryIO, lock: threading.Lock) -> None:
    """Copy ``pipe`` to the console stream and to ``out`` as it comes."""
    raw = getattr(console, "buffer", None)  # None when the stream was replaced by a text one
    while chunk := os.read(pipe.fileno(), 65536):
        with lock:
            console.flush()
            if raw is not None:
                raw.write(chunk)
                raw.flush()
            else:
                console.write(chunk.decode(errors="replace"))
                console.flush()
            out.write(chunk)
            out.flush()
    pipe.close()


def _stopped_error(
    signum: int, jobs: list[tuple[int, list[str]]], results: list[JobReturn | None]
) -> Preempted:
    """One line: which jobs were stopped (and how to continue each), which never started."""
    name = signal.Signals(signum).name
    stopped = [
        f"python training/run_experiment.py {' '.join(r.overrides)} ckpt_path={r.working_dir}"
        for r in results
        if r is not None and r.status == JobStatus.FAILED
    ]
    not_started = [f"#{idx}" for (idx, _), r in zip(jobs, results, strict=True) if r is None]
    parts = [f"Sweep stopped by {name}"]
    if stopped:
        parts.append(
            f"continue the stopped job(s) from their last.ckpt with: {' ; '.join(stopped)}"
        )
    if not_started:
        parts.append(f"job(s) {', '.join(not_started)} did not start: run them again with -m")
    error = Preempted("; ".join(parts) + ".")
    error.exit_code = 128 + signum
    return error


def _on(gpus: str | None) -> str:
    return f" (GPU {gpus})" if gpus is not None else ""


def _val_loss(job_dir: Path) -> float | None:
    # imported here: Hydra imports every plugin at start-up, and this pulls in Lightning
    from llm_scratch.summary import read_summary

    return read_summary(job_dir).get("metrics", {}).get("val/loss")
