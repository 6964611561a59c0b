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
stop, no further job starts, and the sweep exits 143 (130 for SIGINT) with one line giving the
command that continues it: the same command with ``hydra.sweep.dir=<its directory>``, which skips
the finished jobs, continues the stopped ones from their ``last.ckpt`` in their own directories
and runs the rest (see ``continuation.py``).
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
from typing import BinaryIO, TextIO

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.llm_scratch_launcher.continuation import (
    JobState,
    MultirunYaml,
    check_same_sweep,
    claim_job_dir,
    continue_command,
    job_config,
    job_state,
    prepare_restart,
    sweep_lock,
    write_manifest,
)
from llm_scratch.compat import QuietJobReturn
from llm_scratch.errors import Preempted, UserError
from llm_scratch.sweep_env import CONTINUE_ENV, SWEEP_ID_ENV
from llm_scratch.utils.config_tree import print_config_tree

log = logging.getLogger(__name__)

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
        # put back if the directory is refused (it holds a sweep of other overrides)
        self._multirun_yaml = MultirunYaml(config)

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
        groups = self._device_groups()
        jobs = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        self._stop = _Stop()
        with self._stop.forwarding():
            configs = {idx: self._job_config(idx, overrides) for idx, overrides in jobs}
            job_dirs = {idx: _job_dir(c) for idx, c in configs.items()}
            # one batch (Hydra's default): these are all the sweep's jobs
            max_batch = self.config.hydra.sweeper.get("max_batch_size")
            whole = initial_job_idx == 0 and max_batch is None
            with contextlib.ExitStack() as locked:
                try:
                    # nothing is written before the directory is checked: a sweep deletes or
                    # writes over only what it wrote (continuation.py)
                    continuing = check_same_sweep(sweep_dir, dict(jobs), job_dirs, whole=whole)
                    sweep_dir.mkdir(parents=True, exist_ok=True)
                    locked.enter_context(sweep_lock(sweep_dir))
                except UserError:  # refused: the directory is left as it was
                    self._multirun_yaml.restore()
                    raise
                return self._launch(jobs, configs, job_dirs, sweep_dir, continuing, groups)

    def _launch(
        self,
        jobs: list[tuple[int, list[str]]],
        configs: dict[int, DictConfig],
        job_dirs: dict[int, Path],
        sweep_dir: Path,
        continuing: bool,
        groups: list[str | None],
    ) -> Sequence[JobReturn]:
        self._sweep_id = write_manifest(sweep_dir, dict(jobs), job_dirs)
        states = {idx: job_state(job_dirs[idx]) for idx, _ in jobs}
        self._command = continue_command(sweep_dir)
        slots: queue.Queue = queue.Queue()
        for group in groups:
            slots.put(group)
        where = f", each on GPU(s) {' / '.join(groups)}" if self.devices_per_job else ""
        # in full: report.py and the command that continues a stopped sweep need this directory
        log.info("Sweep directory: %s", sweep_dir.resolve())
        if continuing:
            count = {s: sum(1 for v in states.values() if v == s) for s in JobState}
            restarting = (
                f" ({count[JobState.RESTART]} of them started but saved no checkpoint: afresh)"
            )
            log.info(
                "Continuing the sweep: %d job(s) finished (kept as they are), %d to continue from "
                "their checkpoints/last.ckpt, %d to run%s",
                count[JobState.FINISHED],
                count[JobState.CONTINUE],
                count[JobState.RUN] + count[JobState.RESTART],
                restarting if count[JobState.RESTART] else "",
            )
        self._print_config(configs[jobs[0][0]], jobs[0][0])
        to_start = sum(1 for v in states.values() if v != JobState.FINISHED)
        log.info(
            "Launching %d jobs, %d at a time, each in its own process%s",
            to_start,
            min(len(groups), max(to_start, 1)),
            where,
        )

        def run(job: tuple[int, list[str]]) -> JobReturn | None:
            idx, overrides = job
            if states[idx] == JobState.FINISHED:
                return self._finished(idx, overrides, configs[idx], job_dirs[idx])
            group = slots.get()
            try:
                if self._stop.signal is not None:  # stopped: start no further job
                    return None
                return self._run_one(
                    idx,
                    overrides,
                    configs[idx],
                    sweep_dir,
                    states[idx],
                    group,
                    quiet=len(groups) > 1,
                )
            finally:
                slots.put(group)

        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            results = list(pool.map(run, jobs))
        if self._stop.signal is not None:
            raise _stopped_error(self._stop.signal, jobs, results, self._command)
        failed = [r for r in results if r.status == JobStatus.FAILED]
        for r in failed:  # the sweeper raises the first one: say how many there were
            r._return_value.args = (
                f"{r._return_value} ({len(failed)} of {len(results)} job(s) failed; the sweep "
                f"is in {sweep_dir.resolve()}). To run the failed job(s) again, keeping the "
                f"finished ones: {self._command}",
            )
        log.info(
            "Sweep directory: %s; its report: python training/report.py %s",
            sweep_dir.resolve(),
            sweep_dir.resolve(),
        )
        return results

    def _job_config(self, idx: int, overrides: list[str]) -> DictConfig:
        return job_config(self.hydra_context, self.config, idx, overrides)

    def _job_return(
        self, overrides: list[str], sweep_config: DictConfig, job_dir: Path
    ) -> QuietJobReturn:
        return QuietJobReturn(
            overrides=overrides,
            cfg=OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"]),
            hydra_cfg=sweep_config,
            working_dir=str(job_dir),
            task_name=str(sweep_config.hydra.job.name),
        )

    @staticmethod
    def _print_config(sweep_config: DictConfig, idx: int) -> None:
        """The config once for the whole sweep (its first job's) with ``print_config=true``, else
        where it is; the jobs print none, and each writes its own to config.yaml in its
        directory."""
        if not sweep_config.get("print_config"):
            log.info("Each job's config: <its directory>/config.yaml (print_config=true prints it)")
            return
        job_cfg = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
        with open_dict(job_cfg):  # a job's own directory is known only in the job
            job_cfg.paths.output_dir = str(
                Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
            )
        print_config_tree(job_cfg)
        log.info("The config of job #%d; every job's own is in <its directory>/config.yaml", idx)

    def _finished(
        self, idx: int, overrides: list[str], sweep_config: DictConfig, job_dir: Path
    ) -> JobReturn:
        """A job that finished in an earlier run of the sweep: its directory is only read."""
        log.info("\t#%d : %s (finished earlier: kept)", idx, " ".join(filter_overrides(overrides)))
        ret = self._job_return(overrides, sweep_config, job_dir)
        ret.status = JobStatus.COMPLETED
        ret.return_value = _val_loss(job_dir)
        return ret

    def _run_one(
        self,
        idx: int,
        overrides: list[str],
        sweep_config: DictConfig,
        sweep_dir: Path,
        state: JobState,
        gpus: str | None,
        quiet: bool,
    ) -> JobReturn:
        job_dir = _job_dir(sweep_config)
        command = [
            *script_command(),
            *overrides,
            *self._hydra_overrides(),
            f"hydra.run.dir={job_dir}",
            f"hydra.job.num={idx}",
            f"hydra.job.id={idx}",
        ]
        env = dict(os.environ)
        env.pop(CONTINUE_ENV, None)
        env[SWEEP_ID_ENV] = f"{sweep_config.task_name}-{sweep_dir.name}"
        env["PYTHONUNBUFFERED"] = "1"  # its lines reach the console and job_output.log at once
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        how = ""
        if state == JobState.CONTINUE:
            # the job continues from its own last.ckpt, in its own directory (not an override:
            # its .hydra/overrides.yaml stays the job's own)
            env[CONTINUE_ENV] = str(job_dir.resolve())
            how = " (continuing from its checkpoints/last.ckpt)"
        elif state == JobState.RESTART:
            prepare_restart(job_dir, sweep_dir, self._sweep_id, idx)
            how = " (started earlier but saved no checkpoint: afresh)"
        log.info("\t#%d : %s%s%s", idx, " ".join(filter_overrides(overrides)), how, _on(gpus))
        # its marker, before anything else is written there: the folder is this sweep's own
        claim_job_dir(job_dir, sweep_dir, self._sweep_id, idx)
        start = time.time()
        # Its output always goes to job_output.log (an error line is otherwise only on the
        # console); one job at a time it is also copied to the console. A continued job's
        # output follows what it printed before it was stopped.
        mode = "ab" if state == JobState.CONTINUE else "wb"
        with (job_dir / "job_output.log").open(mode) as out:
            if state == JobState.CONTINUE:
                out.write(f"\n--- continued by the sweep at {time.ctime()} ---\n".encode())
                out.flush()
            code = self._stop.run(command, env, out, to_console=not quiet)
        log.info("\t#%d finished in %.0fs with exit code %d", idx, time.time() - start, code)
        ret = self._job_return(overrides, sweep_config, job_dir)
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


def _job_dir(sweep_config: DictConfig) -> Path:
    return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)


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
    signum: int,
    jobs: list[tuple[int, list[str]]],
    results: list[JobReturn | None],
    command: str,
) -> Preempted:
    """One line: which jobs finished, were stopped and did not start, and the one command that
    continues the sweep."""
    name = signal.Signals(signum).name
    done, stopped, not_started = [], [], []
    for (idx, _), r in zip(jobs, results, strict=True):
        if r is None:
            not_started.append(f"#{idx}")
        elif r.status == JobStatus.COMPLETED or job_state(Path(r.working_dir)) == JobState.FINISHED:
            done.append(f"#{idx}")
        else:
            stopped.append(f"#{idx}")
    parts = [f"Sweep stopped by {name}"]
    if done:
        parts.append(f"job(s) {', '.join(done)} finished")
    if stopped:
        parts.append(f"job(s) {', '.join(stopped)} stopped")
    if not_started:
        parts.append(f"job(s) {', '.join(not_started)} did not start")
    error = Preempted(
        "; ".join(parts) + ". Continue the sweep (finished jobs are kept, stopped ones continue "
        f"from their last.ckpt, the others run) with: {command}"
    )
    error.exit_code = 128 + signum
    return error


def _on(gpus: str | None) -> str:
    return f" (GPU {gpus})" if gpus is not None else ""


def _val_loss(job_dir: Path) -> float | None:
    # imported here: Hydra imports every plugin at start-up, and this pulls in Lightning
    from llm_scratch.summary import read_summary

    return read_summary(job_dir).get("metrics", {}).get("val/loss")
