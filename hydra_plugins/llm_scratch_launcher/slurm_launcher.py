"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher, refusing a sweep directory
that already holds jobs.

A stopped SLURM sweep is not continued in its directory as the subprocess launchers continue
theirs (continuation.py): submitit runs each job inside Hydra's own ``run_job``, which rewrites
the job's ``.hydra/`` before our code runs, on every task of a multi-task job at once. Started
again into the same ``hydra.sweep.dir``, every job would be submitted again and each refused by
the training job for holding a run; this launcher refuses it up front, with one line, before
anything is submitted or written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra_plugins.llm_scratch_launcher.continuation import MultirunYaml
from llm_scratch.errors import UserError

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as _SubmititSlurmLauncher,
    )
except ImportError:  # the slurm extra is not installed
    _SubmititSlurmLauncher = None


def check_new_sweep_dir(sweep_dir: Path) -> None:
    jobs = sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    if jobs:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} already holds sweep jobs ({', '.join(jobs)}); with "
            "hydra/launcher=slurm a sweep is not continued in its directory. Continue a stopped "
            "job on its own with python training/run_experiment.py <its overrides> "
            "ckpt_path=<its job directory> (it gets a directory of its own), or run the sweep "
            "in a new hydra.sweep.dir."
        )


if _SubmititSlurmLauncher is not None:

    class SlurmLauncher(_SubmititSlurmLauncher):
        def setup(self, *, hydra_context, task_function, config) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            self._multirun_yaml = MultirunYaml(config)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            if initial_job_idx == 0:
                try:
                    check_new_sweep_dir(Path(str(self.config.hydra.sweep.dir)))
                except UserError:
                    self._multirun_yaml.restore()
                    raise
            return super().launch(job_overrides, initial_job_idx)
